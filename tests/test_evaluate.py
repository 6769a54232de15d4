"""univae.evaluate: the likelihood pieces against the model's own forward and analytic values, and
the whole report end to end on an untrained debug checkpoint laid out as train.py writes it."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import univae
from univae import data as D
from univae import evaluate as E
from univae import measure, rundir
from univae import metrics as M
from univae.cli import CLIError
from univae.diagnostics import collapse_warning, latent_metrics
from univae.latents import make_family
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts
from univae.vmf import log_sphere_area, vmf_log_normalizer

SENTENCES = [
    "今天天气很好",
    "我们去公园散步",
    "这家酒店的服务很周到",
    "房间干净整洁",
    "早餐的种类太少了",
    "交通非常方便",
    "前台的态度很差",
    "价格有点贵",
    "下次还会再来",
    "床很舒服睡得很好",
    "这本书写得很精彩",
    "故事情节引人入胜",
    "翻译质量一般",
    "快递送得很快",
    "包装有点破损",
    "屏幕显示效果不错",
    "电池续航时间太短",
    "键盘手感很好",
    "系统运行流畅",
    "性价比很高",
    "周围的环境很安静",
    "停车不太方便",
    "服务员很热情",
    "菜的味道一般",
    "窗外的风景很美",
    "网速太慢了",
    "隔音效果不好",
    "洗澡水不够热",
    "总体来说还可以",
    "值得推荐给朋友",
    "iphone 手机很好用",
    "我爱北京天安门",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """OUT/step-3 (weights, train_args.json), OUT/last -> step-3, OUT/metrics.jsonl, and the corpus file."""
    root = tmp_path_factory.mktemp("evaluate")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    tok = build_tokenizer(char_vocab(SENTENCES))
    model = univae.UniVAE(univae.preset("debug", vocab_size=tok.get_vocab_size()), tok)
    out = root / "run"
    ckpt = out / "step-3"
    model.save_pretrained(str(ckpt))
    (ckpt / "train_args.json").write_text(
        json.dumps({"corpus": str(corpus), "split_seed": 1, "val": ""}), encoding="utf-8"
    )
    (out / "last").symlink_to("step-3")
    rows = [
        {"step": 1, "loss": 5.0, "ce": 5.0, "kl": 3.0, "lr": 1e-3, "tokens_per_s": 100.0},
        {"step": 2, "loss": 4.0, "ce": 4.0, "kl": 3.0, "lr": 1e-3, "tokens_per_s": 100.0},
        {
            "step": 2,
            "split": "val",
            "ce": 4.5,
            "bits_per_char": 6.0,
            "kl": 3.0,
            "kl_per_layer": [1.5, 1.5],
            "exact_match": 0.0,
            "char_f1": 0.1,
        },
    ]
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "lo', encoding="utf-8"
    )
    return out, corpus


@pytest.fixture(scope="module")
def model(run_dir):
    return univae.UniVAE.from_pretrained(str(run_dir[0] / "last")).eval()


# ----------------------------------------------------------------------------- likelihood pieces


def test_log_sphere_area_known_values():
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi))  # the unit circle's circumference
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi))  # the unit sphere's surface


def test_sequence_log_likelihood_equals_the_training_ce(model):
    """Summed over sentences, -log p(x|z) is the joined forward's CE times its token count, with the
    same forced z, on a batch trimmed to its longest sentence."""
    ids, _, _ = encode_texts(model.tokenizer, SENTENCES[:6], model.config.maxlen)
    torch.manual_seed(0)
    z = model.sample_prior(6)
    with torch.no_grad():
        ll, n = measure.sequence_log_likelihood(model, z, measure.trim(ids, 0))
        out = model(*D.join(ids), z=z)
    assert int(n.sum()) == int(out.n_tokens) == sum(len(s) + 1 for s in SENTENCES[:6])  # one token per char, plus [SEP]
    torch.testing.assert_close(-ll.sum() / n.sum(), out.ce, atol=1e-5, rtol=1e-5)


def test_importance_weighted_against_a_recomputation(model):
    """The estimate recomputed sample by sample: log p(x|z_k) from the joined forward with z forced,
    log q from the vMF density written out, log p(z) = -log|S^{d-1}| per layer (d = 8: pi^4 / 3)."""
    ids, _, _ = encode_texts(model.tokenizer, SENTENCES[:2], model.config.maxlen)
    K, family = 5, model.family
    with torch.no_grad():
        torch.manual_seed(0)
        log_px, elbo = measure.importance_weighted(model, ids, K)
        torch.manual_seed(0)  # the same draws, in the same order: layer by layer, rows b*K + k
        params = [p.repeat_interleave(K, dim=0) for p in model.posterior_params(ids)]
        zs = [family.sample(p) for p in params]
        log_q = sum(
            vmf_log_normalizer(16.0, 8) + 16.0 * (z * F.normalize(p, dim=-1)).sum(-1) for z, p in zip(zs, params)
        )
        log_p = 2 * -math.log(math.pi**4 / 3)
        joined, token_types = D.join(ids.repeat_interleave(K, dim=0))
        out = [model(joined[i : i + 1], token_types[i : i + 1], z=torch.cat(zs, -1)[i : i + 1]) for i in range(2 * K)]
        ll = torch.stack([-o.ce * o.n_tokens for o in out])
    log_w = (ll + log_p - log_q).double().view(2, K)
    torch.testing.assert_close(log_px, torch.logsumexp(log_w, 1) - math.log(K), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(elbo, log_w.mean(1), atol=1e-4, rtol=1e-6)
    assert bool((log_px >= elbo).all())  # Jensen
    torch.manual_seed(1)
    one, elbo_one = measure.importance_weighted(model, ids, 1)
    torch.testing.assert_close(one, elbo_one)  # K = 1: the estimate is its own ELBO


def test_gaussian_family_has_a_density():
    """N(0, I) log density against torch.distributions; the IW estimate sits above its ELBO."""
    z = torch.randn(5, 8)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(make_family(univae.preset("debug", latent="gaussian")).log_prior(z), expected)
    tok = build_tokenizer(char_vocab(SENTENCES))
    torch.manual_seed(0)
    model = univae.UniVAE(univae.preset("debug", vocab_size=tok.get_vocab_size(), latent="gaussian"), tok).eval()
    ids, _, _ = encode_texts(tok, SENTENCES[:3], model.config.maxlen)
    with torch.no_grad():
        log_px, elbo = measure.importance_weighted(model, ids, 8)
    assert measure.has_density(model) and bool((log_px >= elbo).all()) and bool((log_px < 0).all())


def test_no_density_family_is_skipped(model, monkeypatch):
    monkeypatch.delattr(type(model.family), "log_prior")  # as VQ, whose prior is over code indices
    ids, _, _ = encode_texts(model.tokenizer, SENTENCES[:3], model.config.maxlen)
    with torch.no_grad():
        likelihood, latent = measure.likelihood_and_latent_sections(model, ids, SENTENCES[:3], 2, 3, 8)
    assert likelihood["iw_nll"] is None and "no importance-weighted NLL" in likelihood["note"]
    assert likelihood["ce"] > 0 and len(latent["kl_per_layer"]) == model.config.num_latent_layers


# ----------------------------------------------------------------------------- control and prior pieces

# M.CharClasses over these: df 好 2, 很 3, 。 2 (idf log 2, log 4/3, log 2), the rest df 1 (log 4); the
# median over the 14 occurrences is log 2, so content = 贵 甲 乙 丙 丁 and every unseen character
# (not punctuation): 房 间 干 净 脏 are content, 很 好 。 pattern (tests/test_metrics.py works it out).
TINY = ["好很好。", "很好。", "很贵", "甲乙丙丁！"]


@pytest.fixture(autouse=True)
def tiny_idf(monkeypatch):
    """Reports here take their content characters from TINY, not the bundled corpora (seconds to read;
    tests/test_metrics.py reads them once)."""
    classes = M.CharClasses(TINY)
    monkeypatch.setattr(M, "bundled_char_classes", lambda: classes)


def test_control_scores_on_literal_strings():
    classes = M.CharClasses(TINY)
    texts = ["房间很干净", "很好。"]
    outputs = ["房间很脏", "干净", "很好", "很好。"]  # two edits per sentence, grouped per sentence
    reconstructions = ["房间很干净", "很好"]
    s = measure.control_scores(texts, outputs, reconstructions, 2, classes)
    # content: 房间干净 kept 2/4 then 2/4; "很好。" has none, so only the first sentence counts
    assert s["content_kept"] == pytest.approx(0.5)
    # pattern: 很 kept 1/1, then 0/1; 很好。 kept 2/3, then 3/3
    assert s["pattern_kept"] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)
    assert s["changed"] == pytest.approx(3 / 4)  # only "很好" equals its reconstruction
    assert s["char_f1"] == pytest.approx(
        M.mean(M.char_f1(o, t) for o, t in zip(outputs, [texts[0]] * 2 + [texts[1]] * 2))
    )
    assert (
        measure.control_scores(texts, outputs[::2], reconstructions, 1, None)["content_kept"] is None
    )  # no IDF corpus
    with pytest.raises(ValueError):
        measure.control_scores(texts, outputs, reconstructions, 3, classes)


def test_lowest_vs_top():
    rows = [
        {"name": "layer 1", "content_kept": 0.75, "pattern_kept": 0.5},
        {"name": "layer 2", "content_kept": 0.5, "pattern_kept": 0.25},
        {"name": "layer 3", "content_kept": 0.25, "pattern_kept": float("nan")},
    ]
    out = measure.lowest_vs_top(rows)
    assert (out["lowest"], out["top"]) == ("layer 1", "layer 3")
    assert out["content_kept"] == {"lowest": 0.75, "top": 0.25, "diff": 0.5}
    assert out["pattern_kept"]["diff"] is None  # a score that could not be computed makes no difference either
    assert measure.lowest_vs_top(rows[:1]) is None


def test_control_flags_are_checked():
    for flag in ("--control-edits", "--control-sentences"):
        with pytest.raises(CLIError, match=f"{flag} must be at least 1"):
            E.parse_args(["--checkpoint", "x", flag, "0"])


# ----------------------------------------------------------------------------- end to end


def test_split_spec_reproduces_the_training_split(run_dir):
    """CORPUS:SPLIT is that corpus loaded and split as train.py did, with the checkpoint's split seed;
    the training sentences (for novelty) are the train split."""
    out, corpus = run_dir
    train_args = rundir.read_train_args(str(out / "last"))
    texts, source, train_texts, notes = measure.load_data(f"{corpus}:test", 16, train_args)
    expected = D.split(SENTENCES, seed=1)
    assert texts == expected["test"] and train_texts == expected["train"] and notes == []
    assert source.startswith("test split (seed 1)")
    texts, _, _, notes = measure.load_data(f"{corpus}:val", 16, None)
    assert texts == D.split(SENTENCES, seed=0)["val"] and "split seed 0 assumed" in notes[0]


def test_report_end_to_end(run_dir, model, capsys):
    out, corpus = run_dir
    report_dir = out / "eval"
    argv = [
        "--checkpoint",
        str(out / "last"),
        "--data",
        str(corpus),
        "--max-sentences",
        "12",
        "--out",
        str(report_dir),
        "--n-samples",
        "6",
        "--iw-samples",
        "3",
        "--iw-sentences",
        "4",
        "--beam-size",
        "2",
        "--interp-paths",
        "2",
        "--interp-steps",
        "3",
        "--replace-dims",
        "0:4",
        "--batch-size",
        "16",
        "--n-examples",
        "2",
    ]
    assert E.main(argv) == 0
    printed = capsys.readouterr().out
    assert "reconstruction, greedy" in printed and "IW NLL" in printed

    report = json.loads((report_dir / "report.json").read_text(encoding="utf-8"))
    assert set(report) >= {
        "checkpoint",
        "data",
        "settings",
        "reconstruction",
        "likelihood",
        "latent",
        "prior",
        "control",
        "interpolation",
        "training",
        "plots",
        "examples",
        "notes",
    }
    assert report["checkpoint"]["step"] == 3
    test = SENTENCES[:12]
    assert report["data"]["n_sentences"] == 12 and report["data"]["n_available"] == len(SENTENCES)
    assert report["settings"]["iw_sentences"] == 4

    # reconstruction matches the metrics computed directly on the model's own output
    greedy = model.reconstruct(test)
    for key, value in M.full_reconstruction_scores(greedy, test).items():
        assert report["reconstruction"]["greedy"][key] == pytest.approx(value, nan_ok=True)
    assert set(report["reconstruction"]["beam"]) == {"exact_match", "char_f1", "char_bleu", "edit_distance"}

    lk, lt = report["likelihood"], report["latent"]
    for key in ("ce", "bits_per_char", "iw_nll", "iw_ppl", "iw_bits_per_char", "neg_elbo"):
        assert isinstance(lk[key], float) and lk[key] > 0, key
    # untrained: CE near log V; vMF: the KL is the same analytic constant in every layer
    assert lk["ce"] == pytest.approx(math.log(model.config.vocab_size), rel=0.2)
    assert lt["kl_per_layer"] == pytest.approx(model.family.kl_consts * 2) and lt["kl"] == pytest.approx(
        2 * model.family.kl_consts[0]
    )
    # MI and AU are univae.diagnostics' on the posterior params of the evaluated sentences
    ids, _, _ = encode_texts(model.tokenizer, test, model.config.maxlen)
    with torch.no_grad():
        expected = latent_metrics(model.family, model.posterior_params(ids))
    # the sampled estimator can dip slightly below 0 on a near-collapsed (untrained) model
    assert lt["mi"] == pytest.approx(expected["mi"], abs=1e-5) and -0.05 <= lt["mi"] <= math.log(12) + 1e-6
    assert (
        lt["au"] == expected["au"] and lt["au_per_layer"] == expected["au_per_layer"] and len(lt["mi_per_layer"]) == 2
    )
    # untrained, its codes barely differ between sentences: the warning train.py would print, in both files
    assert lt["mi_max"] == pytest.approx(math.log(12)) and lt["warning"] == collapse_warning(expected, model.config)
    assert "layer(s) [0, 1] below 10%" in lt["warning"] and lt["warning"] in (report_dir / "report.md").read_text(
        "utf-8"
    )

    pr = report["prior"]
    assert pr["n_samples"] == 6 and len(report["examples"]["prior"]) == 2
    assert pr["default"] == "uniform" and pr["fitted"] is None and "no fitted prior" in pr["note"]
    block = pr["uniform"]
    for key in ("distinct_1", "distinct_2", "ended_with_sep", "novelty", "first_char_plausibility"):
        assert 0 <= block[key] <= 1, key
        assert pr[key] == block[key], key  # the top-level keys repeat the default prior's block
    assert pr["novelty"] is not None  # train_args.json names the corpus
    assert pr["data_mean_length"] == pytest.approx(M.mean(len(s.replace(" ", "")) for s in test))
    # first-character plausibility: the training split's 100 most frequent first characters (here all of them)
    firsts = M.top_first_chars(D.split(SENTENCES, seed=1)["train"])
    assert pr["data_first_char_plausibility"] == pytest.approx(M.first_char_share(test, firsts))
    # real sentences' diversity at the samples' count: the first n_samples held-out sentences
    assert pr["data_n"] == 6 and pr["data_distinct_2"] == pytest.approx(M.distinct_n(test[:6], 2))
    assert pr["data_distinct_1"] == pytest.approx(M.distinct_n(test[:6], 1))
    assert pr["data_self_bleu"] == pytest.approx(M.self_bleu(test[:6]))
    assert report["examples"]["priors"]["uniform"] == report["examples"]["prior"]

    ctl = report["control"]
    assert ctl["prior"] == "uniform" and ctl["n_sentences"] == 12 and ctl["edits_per_sentence"] == 3
    assert ctl["char_classes"]["n_documents"] == len(TINY) and ctl["n_without_content"] == 0
    assert [r["name"] for r in ctl["per_layer"]] == ["layer 2", "layer 3"]
    assert [r["dims"] for r in ctl["per_layer"]] == ["0:8", "8:16"]
    assert [r["dims"] for r in ctl["ranges"]] == ["0:4"]
    for row in ctl["per_layer"] + ctl["ranges"] + [ctl["unedited"]]:
        for key in ("char_f1", "changed", "content_kept", "pattern_kept"):
            assert 0 <= row[key] <= 1, key
    lvt = ctl["lowest_vs_top"]
    assert lvt["content_kept"]["lowest"] == ctl["per_layer"][0]["content_kept"]
    assert lvt["pattern_kept"]["diff"] == pytest.approx(
        ctl["per_layer"][0]["pattern_kept"] - ctl["per_layer"][-1]["pattern_kept"]
    )

    it = report["interpolation"]
    assert it["n_paths"] == 2 and it["steps"] == 3 and 0 <= it["step_edit_distance"] <= 1
    assert [e["path"][0] for e in report["examples"]["interpolation"]] == [
        model.reconstruct(test[0])[0],
        model.reconstruct(test[2])[0],
    ]
    assert report["training"]["last_step"] == 2 and report["training"]["last_val"]["char_f1"] == 0.1

    for name in report["plots"].values():
        assert (report_dir / name).stat().st_size > 1000
    md = (report_dir / "report.md").read_text(encoding="utf-8")
    for heading in (
        "## Headline",
        "## Checkpoint",
        "## Data",
        "## Reconstruction",
        "## Likelihood and latent health",
        "## Prior samples",
        "## Multi-scale control",
        "## Interpolation",
        "## Training curves",
    ):
        assert heading in md
    assert "![control](control.png)" in md and "![training curves](training_curves.png)" in md
    assert "| content kept | pattern kept |" in md and "| lowest − top |" in md and "first char plausible" in md
    assert test[0] in md  # examples are shown


def test_bad_replace_dims_fails_before_decoding(run_dir, capsys):
    out, corpus = run_dir
    assert E.main(["--checkpoint", str(out / "last"), "--data", str(corpus), "--replace-dims", "0:99"]) == 2
    assert "reaches outside the code" in capsys.readouterr().err


@pytest.mark.parametrize("latent", ["vq", "gmm"])
def test_report_for_vq_and_gmm(run_dir, tmp_path, latent, capsys):
    """The report's latent.codebook / latent.mixture sections and family-specific likelihood and control rows."""
    _, corpus = run_dir
    torch.manual_seed(0)
    tok = build_tokenizer(char_vocab(SENTENCES))
    model = univae.UniVAE(univae.preset("debug", vocab_size=tok.get_vocab_size(), latent=latent, codebook_size=16), tok)
    model.train()
    with torch.no_grad():  # one training forward: the fresh codebook is seeded from the batch
        model(*D.join(encode_texts(tok, SENTENCES, model.config.maxlen)[0]))
    model.save_pretrained(str(tmp_path / "ckpt"))
    argv = [
        "--checkpoint",
        str(tmp_path / "ckpt"),
        "--data",
        str(corpus),
        "--max-sentences",
        "6",
        "--out",
        str(tmp_path / "eval"),
        "--n-samples",
        "3",
        "--iw-samples",
        "2",
        "--iw-sentences",
        "2",
        "--beam-size",
        "2",
        "--interp-paths",
        "1",
        "--interp-steps",
        "3",
        "--batch-size",
        "16",
        "--n-examples",
        "1",
        "--replace-dims",
        "1" if latent == "vq" else "0:4",
    ]
    assert E.main(argv) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    md = (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")
    lt, lk = report["latent"], report["likelihood"]
    if latent == "vq":
        assert lt["kl_per_layer"] == pytest.approx([math.log(16)] * 2)
        assert len(lt["codebook"]["perplexity"]) == 2 and 1 <= lt["codebook"]["perplexity"][0] <= 6
        assert lk["iw_nll"] is None and "codebook perplexity" in md
        assert [r["dims"] for r in report["control"]["per_layer"]] == ["0:1", "1:2"]  # code positions
        assert [r["dims"] for r in report["control"]["ranges"]] == ["1:2"]
    else:
        assert lk["iw_nll"] > 0 and lk["neg_elbo"] >= lk["iw_nll"] - 1e-6
        mx = lt["mixture"]
        assert (
            len(mx["usage"][0]) == 5 and 0 <= mx["usage_entropy"][0] <= math.log(5) + 1e-6 and "component usage" in md
        )
    headline = capsys.readouterr().out
    assert ("codebook (per layer)" in headline) == (latent == "vq") and ("mixture (per layer)" in headline) == (
        latent == "gmm"
    )


class ConstantPrior:
    """A stand-in for univae.prior's fitted density: every draw is the same code z0. Prior samples
    call sample(n); edit_z calls conditional_sample, whose redrawn dims here are z0's."""

    def __init__(self, z0):
        self.z0, self.calls = z0, 0

    def sample(self, n, spread=1.0):
        self.calls += 1
        return self.z0.expand(n, -1).clone()

    def conditional_sample(self, z, keep, n):
        self.calls += 1
        out = z.reshape(1, -1).expand(n, -1).clone()
        out[:, ~keep] = self.z0[~keep]
        return out


def test_report_with_a_fitted_prior(run_dir, model, tmp_path):
    """prior.fitted beside prior.uniform, the top-level keys following the fitted one, and the control
    rows redrawn from it: with a constant stand-in every edit is z with that layer's dims from z0, so
    the rows can be recomputed exactly."""
    out, corpus = run_dir
    classes = M.bundled_char_classes()  # tiny_idf's
    args = E.parse_args(
        [
            "--checkpoint",
            str(out / "last"),
            "--data",
            str(corpus),
            "--max-sentences",
            "6",
            "--out",
            str(tmp_path),
            "--n-samples",
            "4",
            "--n-examples",
            "4",
            "--iw-samples",
            "2",
            "--iw-sentences",
            "2",
            "--beam-size",
            "2",
            "--interp-paths",
            "1",
            "--interp-steps",
            "2",
            "--batch-size",
            "16",
            "--control-sentences",
            "4",
            "--control-edits",
            "2",
        ]
    )
    context = E.prepare(args)
    z0 = model.encode([SENTENCES[20]])[0]
    context["model"].fitted_prior = fitted = ConstantPrior(z0)
    report, _ = E.run(args, **context)

    pr, ex = report["prior"], report["examples"]
    assert pr["default"] == "fitted" and "note" not in pr
    assert set(pr["fitted"]) == set(pr["uniform"])
    for key, value in pr["fitted"].items():
        assert pr[key] == value, key
    one = model.generate(z0[None])[0]
    assert ex["priors"]["fitted"] == [one] * 4 == ex["prior"] and pr["fitted"]["self_bleu"] == pytest.approx(100)
    assert pr["fitted"]["distinct_1"] == pytest.approx(M.distinct_n([one] * 4, 1))
    firsts = M.top_first_chars(D.split(SENTENCES, seed=1)["train"])
    for name in ("fitted", "uniform"):
        share = M.first_char_share(ex["priors"][name], firsts)
        assert pr[name]["first_char_plausibility"] == pytest.approx(share)
        assert pr[name]["first_char_ratio"] == pytest.approx(share / pr["data_first_char_plausibility"])

    ctl = report["control"]
    assert ctl["prior"] == "fitted" and ctl["char_classes"]["n_documents"] == len(TINY)
    texts = SENTENCES[:4]
    z, reconstructions = model.encode(texts), model.reconstruct(texts)
    for j, row in enumerate(ctl["per_layer"]):
        span = slice(8 * j, 8 * (j + 1))
        z_edit = z.clone()
        z_edit[:, span] = z0[span]
        outputs = [o for o in model.generate(z_edit) for _ in range(2)]
        expected = measure.control_scores(texts, outputs, reconstructions, 2, classes)
        assert {k: row[k] for k in expected} == pytest.approx(expected)
        assert 0 <= row["content_kept"] <= 1 and 0 <= row["pattern_kept"] <= 1
    assert fitted.calls == 1 + 2 * 4  # one prior block, and one draw per sentence for each of the two layers
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "| fitted |" in md and "| sample (uniform) | sample (fitted) |" in md and "from the `fitted` prior" in md
