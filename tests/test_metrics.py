"""Text metrics on hand-made strings with values worked out by hand (or by sacrebleu itself)."""
import math

import pytest
import sacrebleu

from univae import metrics as M


def test_exact_match_ignores_whitespace():
    assert M.exact_match("我 爱 你", "我爱你\n") == 1.0
    assert M.exact_match("我爱你", "我爱他") == 0.0
    assert M.exact_match("", " ") == 1.0


def test_char_f1():
    assert M.char_f1("我爱你", "我爱他") == pytest.approx(2 / 3)  # overlap 2 of 3 each way
    assert M.char_f1("猫猫", "猫") == pytest.approx(2 / 3)  # multisets: p = 1/2, r = 1
    assert M.char_f1("我 爱你", "你爱我") == 1.0  # order-free
    assert M.char_f1("", "") == 1.0
    assert M.char_f1("甲", "乙") == 0.0


def test_edit_distance():
    assert M.edit_distance("我爱你", "我爱他") == pytest.approx(1 / 3)
    assert M.edit_distance("kitten", "sitting") == pytest.approx(3 / 7)  # 3 edits / longer length 7
    assert M.edit_distance("你 好", "你好") == 0.0
    assert M.edit_distance("", "") == 0.0
    assert M.edit_distance("甲乙", "") == 1.0


def test_reconstruction_scores():
    s = M.full_reconstruction_scores(["我爱你", "甲乙丙戊"], ["我 爱 你", "甲乙丙丁"])
    assert s["exact_match"] == 0.5
    assert s["char_f1"] == pytest.approx((1 + 3 / 4) / 2)
    assert s["edit_distance"] == pytest.approx((0 + 1 / 4) / 2)
    with pytest.raises(ValueError):
        M.reconstruction_scores(["a"], [])


def test_char_bleu_by_hand():
    # "甲乙丙戊" vs "甲乙丙丁": 1..4-gram precisions 3/4, 2/3, 1/2, 0/1; sacrebleu's exp smoothing
    # turns the first zero into 1 / (2 * total) = 1/2; equal lengths: no brevity penalty.
    assert M.char_bleu(["甲乙丙戊"], ["甲乙丙丁"]) == pytest.approx(100 * (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** 0.25)
    assert M.char_bleu(["我 爱北京"], ["我爱北京"]) == pytest.approx(100)  # whitespace between CJK is no token


def test_bits_per_char():
    assert M.bits_per_char(10 * math.log(2), 5) == pytest.approx(2.0)


def test_distinct_n():
    texts = ["我爱你", "我 爱他"]
    assert M.distinct_n(texts, 1) == pytest.approx(4 / 6)  # 我 爱 你 他 of 6 chars
    assert M.distinct_n(texts, 2) == pytest.approx(3 / 4)  # 我爱 爱你 爱他 of 4 bigrams
    assert math.isnan(M.distinct_n(["我"], 2))


def test_novelty():
    assert M.novelty(["我爱你", "新句子"], ["我 爱你", "别的"]) == 0.5


def test_self_bleu_by_hand():
    assert M.self_bleu(["我爱北京天安门"] * 3) == pytest.approx(100)
    # each of the two is the other's only reference: the char_bleu case above, both ways
    assert M.self_bleu(["甲乙丙丁", "甲乙丙戊"]) == pytest.approx(100 * 2 ** -0.75)
    assert M.self_bleu(["一二三四", "五六七八"]) == 0.0
    assert math.isnan(M.self_bleu(["一"]))


def test_self_bleu_equals_sacrebleu_loop():
    texts = ["我爱北京天安门", "我爱 北京", "天安门上太阳升", "iphone 手机很好用", "手机很好", "我爱我家", "北京", "好"]
    slow = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:], tokenize="zh").score for i, t in enumerate(texts)]
    assert M.self_bleu(texts) == pytest.approx(sum(slow) / len(slow), abs=1e-9)


def test_path_smoothness():
    assert M.path_smoothness([["ab", "ac", "ac"], ["甲", "乙"]]) == pytest.approx((0.25 + 1.0) / 2)
    assert math.isnan(M.path_smoothness([["only"]]))
