"""What the latent space is for, judged by something this project did not write:
augmentation that helps a classifier, and attribute transfer.

    labelled_data(train_args, maxlen)      the corpus's labelled single-piece sentences (univae.data
                                           .labelled_sentences), split as train.py split the corpus:
                                           train (the VAE saw them, unlabelled) and held-out (val +
                                           test: never trained on)
    transfer_trial(model, data, ...)       negative -> positive transfer of held-out negatives, judged
                                           by snownlp's own sentiment classifier, content kept = char
                                           F1 of output vs input; one row per strength
    augmentation_trial(model, data, ...)   a char 1-2-gram TF-IDF + logistic regression (scikit-learn)
                                           trained on N labelled sentences with and without their
                                           augment() variants, accuracy on a fixed test set

bench/transfer.py and bench/augment.py print these over seeds; `python -m univae.evaluate` runs a
small version of both in its `downstream` section. scikit-learn is optional (`pip install -e
".[bench]"`) and imported only by the augmentation trial.
"""

import math
import random
import statistics
import sys
from dataclasses import dataclass, field

import torch

from univae import generate, metrics
from univae.data import labelled_sentences
from univae.model import UniVAE
from univae.rundir import read_train_args, split_corpus

# two-sided 95% Student t quantiles by degrees of freedom (a table, not scipy)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
TEST_SIZE = 1000  # the augmentation test set, held-out sentences first
FROM_TO_SIZE = 2000  # transfer: FROM / TO sentences of each label, from the train split
N_INPUTS = 200  # transfer: negative inputs, held-out ones first


def interval(xs):
    """Mean and the half-width of its 95% t-interval over the values xs (seeds); half-width None for one value."""
    xs = list(xs)
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    t = T95.get(len(xs) - 1, 1.96)
    return m, t * statistics.stdev(xs) / math.sqrt(len(xs))


def fmt_interval(xs, digits=3, scale=1.0):
    m, h = interval([x * scale for x in xs])
    return f"{m:.{digits}f}" if h is None else f"{m:.{digits}f} ± {h:.{digits}f}"


@dataclass
class Labelled:
    """Labelled sentences [(text, label)], in split order: `train` were in the VAE's training split
    (it saw the text, never the label), `held_out` in its val or test split (never seen)."""

    train: list = field(default_factory=list)
    held_out: list = field(default_factory=list)
    corpus: str = ""
    split_seed: int = 0

    @property
    def labels(self):
        return sorted({y for _, y in self.train + self.held_out})


def load_labelled(checkpoint, threads=1):
    """For the benchmarks: (model in eval mode, its corpus's Labelled) from a checkpoint directory;
    exits with one line when the corpus has no labels."""
    torch.set_num_threads(threads)
    model = UniVAE.from_pretrained(checkpoint).eval()
    data = labelled_data(read_train_args(checkpoint), model.config.maxlen)
    if data is None:
        sys.exit(f"error: {checkpoint}'s corpus has no labels (only builtin:reviews has: pos/neg files)")
    return model, data


def labelled_data(train_args, maxlen):
    """The checkpoint's corpus (train_args.json) as Labelled, or None when it has no labels. Split as
    univae.evaluate reloads it (same limit, text field and split seed)."""
    corpus = (train_args or {}).get("corpus") or ""
    labels = labelled_sentences(corpus, maxlen - 2) if corpus else None
    if labels is None:
        return None
    splits, seed = split_corpus(corpus, maxlen, train_args)
    pick = lambda names: [(s, labels[s]) for name in names for s in splits[name] if s in labels]
    return Labelled(train=pick(["train"]), held_out=pick(["val", "test"]), corpus=corpus, split_seed=seed)


# ----------------------------------------------------------------------------- transfer


def judge_positive(texts):
    """snownlp's sentiment classifier (naive Bayes trained on the same review files; this project did
    not write it): True where SnowNLP(s).sentiments > 0.5. An empty output counts as not positive."""
    from snownlp import SnowNLP  # deferred: loading its classifier takes seconds, and only the transfer trial needs it

    return [bool(metrics.strip_ws(s)) and SnowNLP(s).sentiments > 0.5 for s in texts]


def transfer_sets(data, seed, n_inputs=N_INPUTS, n_from_to=FROM_TO_SIZE, source="neg", target="pos"):
    """(inputs, FROM, TO, number of held-out inputs): every held-out `source` sentence first (in split
    order), then train-split ones outside FROM up to n_inputs; FROM / TO are n_from_to train-split
    sentences of each label, drawn with `seed`."""
    rng = random.Random(seed)
    src = [s for s, y in data.train if y == source]
    tgt = [s for s, y in data.train if y == target]
    rng.shuffle(src)
    rng.shuffle(tgt)
    from_texts, to_texts = src[:n_from_to], tgt[:n_from_to]
    held = [s for s, y in data.held_out if y == source][:n_inputs]
    inputs = held + src[n_from_to:][: n_inputs - len(held)]
    return inputs, from_texts, to_texts, len(held)


def transfer_trial(
    model,
    data,
    strengths,
    seed=0,
    method=generate.DEFAULT_DIRECTION,
    n_inputs=N_INPUTS,
    n_from_to=FROM_TO_SIZE,
    **decoding,
):
    """Negative -> positive transfer at each strength: rows {"strength", "positive", "char_f1",
    "positive_held_out", "char_f1_held_out"} (shares judged positive, mean char F1 of output vs input;
    the _held_out pair over the held-out inputs alone), plus "inputs_positive": the judge on the inputs
    themselves. Strength 0 is the plain reconstruction, the baseline. The codes are encoded once."""
    inputs, from_texts, to_texts, n_held = transfer_sets(data, seed, n_inputs, n_from_to)
    if not inputs or not from_texts or not to_texts:
        raise ValueError(f"{data.corpus}: not enough labelled sentences for a transfer trial")
    z = model.encode(inputs)
    direction = generate.attribute_direction(model, model.encode(from_texts), model.encode(to_texts), method=method)
    rows = []
    for strength in strengths:
        out = model.generate(generate.transfer_z(model, z, direction.to(z.device), strength), **decoding)
        pos, f1 = judge_positive(out), [metrics.char_f1(o, t) for o, t in zip(out, inputs)]
        rows.append(
            {
                "strength": strength,
                "positive": metrics.mean(pos),
                "char_f1": metrics.mean(f1),
                "positive_held_out": metrics.mean(pos[:n_held]) if n_held else None,
                "char_f1_held_out": metrics.mean(f1[:n_held]) if n_held else None,
                "examples": list(zip(inputs[:3], out[:3])),
            }
        )
    return {
        "rows": rows,
        "n_inputs": len(inputs),
        "n_held_out_inputs": n_held,
        "n_from": len(from_texts),
        "n_to": len(to_texts),
        "inputs_positive": metrics.mean(judge_positive(inputs)),
        "method": method,
        "seed": seed,
    }


# ----------------------------------------------------------------------------- augmentation


def _sklearn():
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ImportError(
            'the augmentation trial needs scikit-learn: pip install -e ".[bench]" (or pip install scikit-learn)'
        ) from None
    return TfidfVectorizer, LogisticRegression


def classifier_accuracy(train_texts, train_labels, test_texts, test_labels):
    """A character 1-2-gram TF-IDF + logistic regression (scikit-learn defaults otherwise) trained on
    the first pair, accuracy on the second (a list of 0/1 per test sentence)."""
    TfidfVectorizer, LogisticRegression = _sklearn()
    vec = TfidfVectorizer(analyzer="char", ngram_range=(1, 2))
    clf = LogisticRegression(max_iter=1000).fit(vec.fit_transform(train_texts), train_labels)
    return [int(p == y) for p, y in zip(clf.predict(vec.transform(test_texts)), test_labels)]


def augmentation_split(data, test_size=TEST_SIZE):
    """(test set, pool): the test set is every held-out labelled sentence, then train-split ones up to
    test_size (a fixed draw, seed 0); the pool (what a seed samples its N from) is the rest."""
    train = list(data.train)
    random.Random(0).shuffle(train)
    n_extra = max(0, test_size - len(data.held_out))
    return data.held_out + train[:n_extra], train[n_extra:]


def augmentation_trial(
    model, data, sizes, seeds, n_variants, test_size=TEST_SIZE, augment_options=None, log=None, **decoding
):
    """For each seed: N = max(sizes) sentences drawn from the pool (the smaller N are its prefixes),
    their variants from generate.augment (n_variants each, `augment_options` passed on), and for each
    N the classifier's accuracy without and with the variants (each keeps its source's label).
    `copies` trains on the N rows each repeated 1 + (variants / N) times: the gain that reweighting
    alone would bring (logistic regression's L2 penalty weighs less against more rows).
    Returns {"rows": [{"n", "seed", "baseline", "copies", "augmented", "baseline_held_out", "augmented_held_out",
    "variants"}], "n_test", "n_test_held_out", "variants_in_test"}."""
    _sklearn()  # fail before any decoding
    test, pool = augmentation_split(data, test_size)
    n_held = len(data.held_out)
    test_texts, test_labels = [s for s, _ in test], [y for _, y in test]
    test_set = set(test_texts)
    rows, in_test = [], 0
    for seed in seeds:
        drawn = random.Random(seed).sample(pool, max(sizes))
        variants = generate.augment(
            model, [s for s, _ in drawn], n_variants, seed=seed, **(augment_options or {}), **decoding
        )
        in_test += sum(v in test_set for vs in variants for v in vs)
        for n in sizes:
            texts, labels = [s for s, _ in drawn[:n]], [y for _, y in drawn[:n]]
            extra = [(v, y) for (_, y), vs in zip(drawn[:n], variants[:n]) for v in vs]
            base = classifier_accuracy(texts, labels, test_texts, test_labels)
            aug = classifier_accuracy(
                texts + [v for v, _ in extra], labels + [y for _, y in extra], test_texts, test_labels
            )
            k = 1 + round(len(extra) / n)  # each row as often as a source and its variants: the weight alone
            copies = classifier_accuracy(texts * k, labels * k, test_texts, test_labels)
            row = {
                "n": n,
                "seed": seed,
                "baseline": metrics.mean(base),
                "copies": metrics.mean(copies),
                "augmented": metrics.mean(aug),
                "baseline_held_out": metrics.mean(base[:n_held]),
                "augmented_held_out": metrics.mean(aug[:n_held]),
                "variants": len(extra),
            }
            rows.append(row)
            if log:
                log(row)
    return {"rows": rows, "n_test": len(test), "n_test_held_out": n_held, "variants_in_test": in_test}
