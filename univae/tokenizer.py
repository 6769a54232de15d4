"""BERT WordPiece tokenizer from a vocab.txt, char vocabularies, and Chinese-aware detokenisation.

The tokenizer is a plain `tokenizers.Tokenizer` (normaliser, pre-tokeniser and WordPiece model
set up the way BERT's are), so `encode`, `decode`, `token_to_id` and `get_vocab_size` work as
documented there. We add [CLS]/[SEP] and padding ourselves in `encode_texts`, because the joined
layout needs fixed-size halves.
"""

import collections
import json
import os
import unicodedata
import warnings

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


def read_vocab(path):
    """vocab.txt -> list of tokens, one per line, id = line number."""
    with open(path, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    while vocab and vocab[-1] == "":
        vocab.pop()
    missing = [t for t in (PAD, UNK, CLS, SEP) if t not in vocab]
    if missing:
        raise ValueError(f"{path}: vocab has no {', '.join(missing)} token")
    return vocab


def build_tokenizer(vocab, lowercase=True):
    """A BERT-style WordPiece `tokenizers.Tokenizer` over `vocab` (a list of tokens)."""
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(SPECIAL_TOKENS if MASK in vocab else SPECIAL_TOKENS[:4])
    return tok


def load_tokenizer(directory):
    """vocab.txt (+ tokenizer_config.json's do_lower_case, default True) in `directory`."""
    lowercase = True
    config_path = os.path.join(directory, "tokenizer_config.json")
    if os.path.exists(config_path):
        with open(config_path, encoding="utf-8") as f:
            lowercase = json.load(f).get("do_lower_case", True)
    tok = build_tokenizer(read_vocab(os.path.join(directory, "vocab.txt")), lowercase=lowercase)
    tok.do_lower_case = lowercase  # remembered so save_tokenizer writes it back
    return tok


def save_tokenizer(tok, directory):
    """Write vocab.txt (id order) and a tokenizer_config.json that transformers' BertTokenizer reads."""
    vocab = sorted(tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    with open(os.path.join(directory, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("".join(t + "\n" for t, _ in vocab))
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": getattr(tok, "do_lower_case", True)}
    with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, ensure_ascii=False, indent=2)


def char_vocab(texts, min_count=1, lowercase=True):
    """A character-level BERT vocab from an iterable of sentences.

    Special tokens first, then characters by descending frequency (ties by code point, so the
    vocab is deterministic). Characters that BERT's pre-tokeniser glues into words (Latin letters,
    digits) also get their `##` continuation form, so "iphone" tokenises as i ##p ##h ##o ##n ##e
    instead of [UNK].
    """
    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    counts = collections.Counter()
    for text in texts:
        counts.update(ch for ch in norm.normalize_str(text) if not ch.isspace())
    chars = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
    vocab = SPECIAL_TOKENS + chars
    vocab += ["##" + c for c in chars if _is_word_char(c)]
    return vocab


def _is_word_char(ch):
    """True for characters BERT's pre-tokeniser joins into multi-char words (not CJK, not punctuation)."""
    return not (_is_cjk(ch) or unicodedata.category(ch).startswith("P") or not ch.isprintable())


def _is_cjk(ch):
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
        or 0x3000 <= cp <= 0x303F
        or 0xFF00 <= cp <= 0xFFEF
    )


ENCODE_CHUNK = 1024  # sentences per encode_batch call: a whole corpus at once holds every Encoding object


def _token_ids(tok, texts):
    """Each sentence's token ids (no special tokens), encoded a chunk at a time."""
    texts = list(texts)
    for start in range(0, len(texts), ENCODE_CHUNK):
        for enc in tok.encode_batch(texts[start : start + ENCODE_CHUNK], add_special_tokens=False):
            yield enc.ids


def encode_texts(tok, texts, maxlen, warn=True):
    """Sentences -> LongTensor (N, maxlen): [CLS] tokens [SEP] then [PAD]; too-long ones are cut.

    Returns (ids, n_truncated, n_unk). Truncation keeps the closing [SEP] so the target still
    teaches the model to stop.
    """
    pad, cls, sep, unk = (tok.token_to_id(t) for t in (PAD, CLS, SEP, UNK))
    ids = torch.full((len(texts), maxlen), pad, dtype=torch.long)
    n_truncated = n_unk = 0
    for i, body in enumerate(_token_ids(tok, texts)):
        if len(body) > maxlen - 2:
            body = body[: maxlen - 2]
            n_truncated += 1
        n_unk += sum(t == unk for t in body)
        ids[i, : len(body) + 2] = torch.tensor([cls, *body, sep])
    if warn and n_truncated:
        warnings.warn(f"{n_truncated} of {len(texts)} sentence(s) longer than maxlen={maxlen} tokens were truncated")
    return ids, n_truncated, n_unk


def detokenize(tok, ids):
    """Token ids -> readable text: no spaces between CJK characters, WordPiece `##` joined,
    a space only between two Latin words; [CLS]/[SEP]/[PAD] dropped, [UNK] kept as "[UNK]"."""
    skip = {tok.token_to_id(t) for t in (PAD, CLS, SEP)}
    out = ""
    for i in ids:
        i = int(i)
        if i in skip:
            continue
        piece = tok.id_to_token(i)
        if piece is None:
            piece = UNK
        if piece.startswith("##"):
            out += piece[2:]
        elif out and _is_word_char(out[-1]) and _is_word_char(piece[0]) and piece != UNK:
            out += " " + piece
        else:
            out += piece
    return out
