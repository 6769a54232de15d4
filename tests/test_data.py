"""univae.data against hand-worked expectations: normalisation, segmentation, corpus reading,
splits and batches."""

import json
import re

import pytest
import torch

from univae import tokenizer
from univae.data import Batches, CorpusError, iter_corpus, join, load_sentences, new_report, normalize, segment, split
from univae.tokenizer import build_tokenizer, char_vocab

# ---------------------------------------------------------------------------------------------
# normalize


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("１９９８年", "1998年"),
        ("ＡＢＣｘｙｚ　１２３", "ABCxyz 123"),  # U+3000 ideographic space -> space
        ("３．５％，Ｃ＋＋／Ｊａｖａ", "3.5%，C++/Java"),  # symbols half-width, ， kept
        ("你好，世界！真的？是的：好；（注）、“引号”《书》。", "你好，世界！真的？是的：好；（注）、“引号”《书》。"),
        ("好～～，１～２", "好~~，1~2"),
        ("  a \t\n b\u3000\u3000c\u00a0 ", "a b c"),
        ("a\x00b\u200bc\x7fd\ufeff", "abcd"),  # Cc and Cf dropped
        ("", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


# ---------------------------------------------------------------------------------------------
# segment


def test_segment_short_line_unchanged():
    assert segment("今天天气很好，我们去公园。", 20) == ["今天天气很好，我们去公园。"]


def test_segment_prefers_period_over_comma():
    # 21 chars > 12: split at 。 first; each half fits, so the inner ， is never used
    assert segment("我们去公园玩，天气很好。明天再去，好不好？", 12) == [
        "我们去公园玩，天气很好。",
        "明天再去，好不好？",
    ]


def test_segment_greedy_merge_keeps_inner_punctuation_strips_ends():
    # pieces 一二|三四|五六|七八 merged while len(buf) + len(piece) <= limit - 1;
    # the inner ， stays, the trailing ， of "一二，三四，" is stripped
    assert segment("一二，三四，五六，七八", 6) == ["一二，三四", "五六，七八"]


def test_segment_falls_through_to_later_separators():
    # no 。: the \n and 。！？ levels pass it on whole, ； cuts it, then ， inside the long half
    assert segment("甲乙丙丁戊；己庚，辛壬癸子丑", 6) == ["甲乙丙丁戊", "己庚", "辛壬癸子丑"]


def test_segment_newline_first():
    assert segment("第一行，很短\n第二行。也短", 8) == ["第一行，很短", "第二行。也短"]


def test_segment_strips_and_drops_empty():
    assert segment("，，你好；, ", 10) == ["你好"]
    assert segment("，；, ", 10) == []
    assert segment("", 10) == []


def test_segment_keeps_unsplittable_long_piece():
    assert segment("一二三四五六七八", 4) == ["一二三四五六七八"]


# ---------------------------------------------------------------------------------------------
# corpus reading


def write_lines(path, lines):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_txt_skips_and_reports_bad_lines(tmp_path):
    path = write_lines(tmp_path / "c.txt", [b"good one", b"", b"bad \xff\xfe bytes", b"  ", "第二句".encode()])
    report = new_report()
    assert list(iter_corpus(str(path), report=report)) == ["good one", "第二句"]
    assert report == {"lines": 5, "empty": 2, "skipped": 1, "problems": [f"{path}:3: invalid UTF-8 at byte 4"]}


def test_jsonl_skips_and_reports_bad_lines(tmp_path):
    lines = [
        json.dumps({"text": "第一句"}, ensure_ascii=False).encode(),
        b'{"text": "oops"',
        b'{"body": "no text field"}',
        b'{"text": 3}',
        b"[1, 2]",
        b"",
        json.dumps({"text": "第二句", "id": 7}, ensure_ascii=False).encode(),
    ]
    path = write_lines(tmp_path / "c.jsonl", lines)
    report = new_report()
    assert list(iter_corpus(path, report=report)) == ["第一句", "第二句"]
    assert report["skipped"] == 4
    assert [p.split(": ")[0] for p in report["problems"]] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert report["problems"][1] == f"{path}:3: no field 'text'"
    assert report["problems"][2] == f"{path}:4: field 'text' is int, not a string"
    assert list(iter_corpus(path, text_field="body")) == ["no text field"]


def test_strict_raises_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", [b'{"text": "ok"}', b"", b"not json"])
    with pytest.raises(CorpusError, match=re.escape(f"{path}:3: bad JSON")):
        list(iter_corpus(path, strict=True))
    txt = write_lines(tmp_path / "c.txt", [b"ok", b"\xc3("])
    with pytest.raises(CorpusError, match=re.escape(f"{txt}:2: invalid UTF-8")):
        load_sentences(txt, 30, strict=True)


def test_file_without_usable_lines_raises(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [b"", b"{", b'{"other": 1}', b"   "])
    with pytest.raises(CorpusError, match=re.escape(str(path))):
        list(iter_corpus(path))
    only_punct = write_lines(tmp_path / "punct.txt", ["，，".encode(), b"\x00"])
    with pytest.raises(CorpusError, match="no sentence"):
        load_sentences(only_punct, 30)


def test_missing_file_raises(tmp_path):
    with pytest.raises(CorpusError, match=re.escape(f"{tmp_path / 'nope.txt'}: no such file")):
        iter_corpus(tmp_path / "nope.txt")  # eagerly, before any iteration
    with pytest.raises(CorpusError, match="unknown built-in"):
        iter_corpus("builtin:poems")


def test_load_sentences_normalises_segments_dedupes(tmp_path):
    lines = ["第一句话很长，需要切开。第二句", "第二句", "ＡＢ  Ｃ", "一二三四五六七八九十"]
    path = write_lines(tmp_path / "c.txt", [line.encode() for line in lines])
    sentences, stats = load_sentences(path, 8)
    # 。 leaves 12 chars, still > 8, so ， cuts again; the 10 chars without separators stay whole
    assert sentences == ["第一句话很长", "需要切开。", "第二句", "AB C", "一二三四五六七八九十"]
    assert stats["duplicates"] == 1 and stats["sentences"] == 5 and stats["longer_than_limit"] == 1
    assert stats["lines"] == 4 and stats["skipped"] == 0


@pytest.fixture(scope="module")
def builtin():
    return {name: load_sentences(f"builtin:{name}", 30) for name in ("reviews", "news")}


def test_builtin_reviews(builtin):
    sentences, stats = builtin["reviews"]
    assert stats["lines"] == 16548 + 18576  # pos.txt + neg.txt
    assert len(sentences) > 10_000 and all(sentences)
    assert "有兴趣的朋友可以访问我的网站，交流切磋。" in sentences


def test_builtin_news(builtin):
    sentences, stats = builtin["news"]
    assert stats["lines"] == 19484 and stats["skipped"] == 0
    assert len(sentences) > 10_000 and all(sentences)
    # the first line of seg/data.txt, "迈/b 向/e ... （/s 附/s 图/b 片/e １/s 张/s ）/s", rebuilt and normalised
    assert sentences[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片1张）"
    assert not any(re.search("/[bmes]", s) for s in sentences)  # no tag residue
    assert not any(re.search("[０-９Ａ-Ｚａ-ｚ]", s) for s in sentences)
    assert any("1998" in s for s in sentences)


# ---------------------------------------------------------------------------------------------
# split


def test_split_deterministic_disjoint_covering():
    sentences = [f"s{i}" for i in range(500)]
    a, b = split(sentences, seed=3), split(sentences, seed=3)
    assert a == b
    assert split(sentences, seed=4) != a
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (480, 10, 10)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(sentences)


@pytest.mark.parametrize("n, sizes", [(50, (48, 1, 1)), (3, (1, 1, 1)), (200_000, (196_000, 2000, 2000))])
def test_split_sizes(n, sizes):
    parts = split([str(i) for i in range(n)])
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == sizes


def test_split_without_val_keeps_test():
    sentences = [str(i) for i in range(50)]
    parts = split(sentences, val_fraction=0)
    assert parts["val"] == [] and len(parts["test"]) == 1 and len(parts["train"]) == 49
    assert parts["test"] == split(sentences)["test"]  # test is cut first: same test set


def test_split_too_small():
    with pytest.raises(ValueError, match="at least 3"):
        split(["a", "b"])


# ---------------------------------------------------------------------------------------------
# Batches


def row_ids(n, maxlen=4):
    """Row i is filled with i, so a batch's first column names its rows."""
    return torch.arange(n).unsqueeze(1).expand(n, maxlen).clone()


def take(batches, steps):
    return [batches.next_batch()[:, 0].tolist() for _ in range(steps)]


def test_batches_ranks_disjoint_and_cover_epoch():
    ids = row_ids(40)
    r0, r1 = Batches(ids, 4, seed=1, rank=0, world_size=2), Batches(ids, 4, seed=1, rank=1, world_size=2)
    assert r0.steps_per_epoch == 5
    seen0, seen1 = sum(take(r0, 5), []), sum(take(r1, 5), [])
    assert set(seen0).isdisjoint(seen1) and sorted(seen0 + seen1) == list(range(40))
    # both are one global permutation: rank 0 has its batches 0, 2, 4, ...; rank 1 has 1, 3, 5, ...
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(1)).tolist()
    assert seen0[:4] == perm[0:4] and seen1[:4] == perm[4:8] and seen0[4:8] == perm[8:12]
    assert r0.epoch == 0
    r0.next_batch()
    assert r0.epoch == 1


def test_batches_resume_reproduces_next_batches():
    ids = row_ids(23, maxlen=3)
    a = Batches(ids, 4, seed=7)
    take(a, 7)  # into epoch 1 (5 steps per epoch, last 3 rows dropped)
    state = a.state_dict()
    assert state == {"epoch": 1, "position": 2}
    expected = [a.next_batch() for _ in range(5)]
    b = Batches(ids, 4, seed=7)
    b.load_state_dict(state)
    for want in expected:
        got = b.next_batch()
        assert got.shape == (4, 3) and torch.equal(got, want)


def test_batches_epochs_differ():
    b = Batches(row_ids(32), 8)
    first, second = sum(take(b, 4), []), sum(take(b, 4), [])
    assert sorted(first) == sorted(second) == list(range(32)) and first != second


def test_batches_small_corpus_cycles_and_drop_last_false_wraps():
    b = Batches(row_ids(3), 4, world_size=2)  # fewer rows than one global batch of 8
    batch = b.next_batch()
    assert batch.shape == (4, 4) and set(batch[:, 0].tolist()) <= {0, 1, 2}
    full = Batches(row_ids(10), 4, drop_last=False)
    assert full.steps_per_epoch == 3
    assert set(sum(take(full, 3), [])) == set(range(10))
    with pytest.raises(ValueError, match="N >= 1"):
        Batches(row_ids(0), 4)


def test_join_layout():
    input_ids, token_type_ids = join(torch.tensor([[1, 5, 2, 0]]))
    assert input_ids.tolist() == [[1, 5, 2, 0, 1, 5, 2, 0]]
    assert token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]


def test_bucketed_batches_are_a_permutation_with_similar_lengths():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 16, (400,), generator=g)
    ids = (torch.arange(16)[None, :] < lengths[:, None]).long() * torch.arange(1, 401)[:, None]
    plain, bucketed = Batches(ids, 10, seed=3), Batches(ids, 10, seed=3, bucket=8)
    rows_p = torch.cat([plain.next_batch() for _ in range(40)])
    rows_b = torch.cat([bucketed.next_batch() for _ in range(40)])
    assert sorted(rows_b[:, 0].tolist()) == sorted(rows_p[:, 0].tolist()) == list(range(1, 401))  # same epoch content
    spread = lambda rows: (rows != 0).sum(1).view(40, 10).float().std(1).mean()
    assert spread(rows_b) < spread(rows_p) / 3
    again = Batches(ids, 10, seed=3, bucket=8)
    again.load_state_dict({"epoch": 0, "position": 13})
    assert torch.equal(again.next_batch(), rows_b[130:140])


def test_encode_texts_in_chunks_is_one_batch_written_out(monkeypatch):
    """encode_texts encodes ENCODE_CHUNK sentences per call; the ids, truncation and [UNK] counts are
    those of the whole list at once: [CLS] body [SEP] then [PAD], bodies cut to maxlen - 2."""
    texts = ["好评", "质量很好，下次还来", "一", "差评！" * 5, "龘好", "还行吧"] * 3
    tok = build_tokenizer(char_vocab([t.replace("龘", "") for t in texts]))
    vocab = tok.get_vocab()
    monkeypatch.setattr(tokenizer, "ENCODE_CHUNK", 4)
    ids, n_truncated, n_unk = tokenizer.encode_texts(tok, texts, maxlen=8, warn=False)
    pad, cls, sep, unk = (tok.token_to_id(t) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"))
    expected = []
    for t in texts:
        body = [vocab.get(ch, unk) for ch in t][:6]
        expected.append([cls, *body, sep] + [pad] * (6 - len(body)))
    assert ids.tolist() == expected
    assert n_truncated == 3 * 2 and n_unk == 3
