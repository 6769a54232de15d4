"""The fitted prior (univae/density.py, python -m univae.prior): EM against a known mixture, densities against
torch.distributions, the conditional against the textbook Gaussian formulas, sphere projection,
the uniform path against the training prior, the RNG left alone, the file format, the command."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import univae
from univae import density as P
from univae import generate as G
from univae import prior as prior_command
from univae.data import load_sentences, split
from univae.tokenizer import build_tokenizer, char_vocab, encode_texts

CHARS = "牙龈出血要吃什么药今天气很好我喜欢手机这是一个测试句子他在家里看书"


def corpus_sentences(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        "".join(CHARS[i] for i in torch.randint(len(CHARS), (int(L),), generator=g))
        for L in torch.randint(4, 12, (n,), generator=g)
    ]


def tiny_model(latent="vmf", seed=0, **overrides):
    vocab = char_vocab([CHARS])
    torch.manual_seed(seed)
    return univae.UniVAE(
        univae.preset("debug", vocab_size=len(vocab), latent=latent, **overrides), build_tokenizer(vocab)
    )


def source_ids(model, texts):
    return encode_texts(model.tokenizer, texts, model.config.maxlen, warn=False)[0]


@pytest.fixture(scope="module")
def fitted():
    """A debug vMF model (2 latent layers x 8 dims) with a 3-component prior fitted to 2 posterior
    samples of each of 200 sentences."""
    model = tiny_model().eval()
    model.fitted_prior = P.fit_prior(
        model, source_ids(model, corpus_sentences(200)), n_components=3, samples_per_sentence=2
    )
    return model


def random_mixture(K, D, seed=0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.rand(K, generator=g, dtype=torch.float64) + 0.2
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    cov = A @ A.transpose(1, 2) / D + 0.2 * torch.eye(D, dtype=torch.float64)
    means = spread * torch.randn(K, D, generator=g, dtype=torch.float64)
    return P.FittedPrior(weights / weights.sum(), means, torch.linalg.cholesky(cov), z_dim=D)


def reference(prior):
    return MixtureSameFamily(Categorical(prior.weights), MultivariateNormal(prior.means, scale_tril=prior.scale_tril))


# ----------------------------------------------------------------------------- EM and the density


def test_em_recovers_a_known_mixture():
    """Three well-separated Gaussians: EM's weights, means and covariances are the moments of each
    true cluster's own points (what maximum likelihood gives when the clusters do not overlap), and
    within sampling error of the truth."""
    truth = random_mixture(3, 3, seed=1, spread=0.0)
    truth.means = torch.tensor([[0.0, 0, 0], [10, 0, 0], [0, 10, -10]], dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    labels = torch.multinomial(truth.weights, 6000, replacement=True, generator=g)
    x = (
        truth.means[labels]
        + (truth.scale_tril[labels] @ torch.randn(6000, 3, 1, generator=g, dtype=torch.float64))[..., 0]
    )
    weights, means, scale_tril, info = P.fit_gmm(x, 3, seed=0)
    assert info["converged"] and info["n_iter"] < 100
    order = torch.cdist(truth.means, means).argmin(-1)  # each true component's nearest fitted one
    assert sorted(order.tolist()) == [0, 1, 2]
    fit = P.FittedPrior(weights[order], means[order], scale_tril[order], z_dim=3)
    clusters = [x[labels == k] for k in range(3)]
    moments_w = torch.tensor([len(c) / len(x) for c in clusters], dtype=torch.float64)
    moments_mu = torch.stack([c.mean(0) for c in clusters])
    moments_cov = torch.stack([torch.cov(c.T, correction=0) for c in clusters]) + info["ridge"] * torch.eye(3)
    torch.testing.assert_close(fit.weights, moments_w, atol=1e-6, rtol=0)
    torch.testing.assert_close(fit.means, moments_mu, atol=1e-6, rtol=0)
    torch.testing.assert_close(fit.covariance, moments_cov, atol=1e-6, rtol=0)
    torch.testing.assert_close(fit.weights, truth.weights, atol=0.02, rtol=0)
    torch.testing.assert_close(fit.means, truth.means, atol=0.1, rtol=0)
    torch.testing.assert_close(fit.covariance, truth.covariance, atol=0.1, rtol=0.1)
    # seeded and deterministic: the same seed gives the same fit to the bit
    again = P.fit_gmm(x, 3, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again[:3], (weights, means, scale_tril)))
    # the reported mean log-likelihood is that of the returned mixture
    assert info["mean_log_likelihood"] == pytest.approx(
        P.FittedPrior(weights, means, scale_tril, 3).log_prob(x).mean().item()
    )


def test_em_in_passes_of_a_few_rows_is_em_in_one(monkeypatch):
    """fit_gmm's passes over the codes (ROWS_PER_PASS rows at a time) change no result beyond
    float64 rounding: 7-row passes against one pass over all 500 rows."""
    x = random_mixture(3, 4, seed=3).sample(500, torch.Generator().manual_seed(4)).double()
    monkeypatch.setattr(P, "ROWS_PER_PASS", 10_000)
    whole = P.fit_gmm(x, 3, seed=0)
    monkeypatch.setattr(P, "ROWS_PER_PASS", 7)
    passes = P.fit_gmm(x, 3, seed=0)
    assert passes[3]["n_iter"] == whole[3]["n_iter"]
    for a, b in zip(passes[:3], whole[:3]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_log_prob_matches_torch_distributions():
    prior = random_mixture(4, 6, seed=3)
    z = torch.cat([reference(prior).sample((50,)), 10 * torch.randn(10, 6, dtype=torch.float64)])  # near and far
    torch.testing.assert_close(prior.log_prob(z), reference(prior).log_prob(z), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        prior.log_prob(z.float()), reference(prior).log_prob(z.float().double()), atol=1e-6, rtol=0
    )


def test_sample_is_a_draw_from_the_mixture():
    prior = random_mixture(2, 3, seed=4)
    z = prior.sample(100_000, generator=torch.Generator().manual_seed(0)).double()
    mean = (prior.weights[:, None] * prior.means).sum(0)
    torch.testing.assert_close(z.mean(0), mean, atol=0.03, rtol=0)
    second = (
        prior.weights[:, None, None] * (prior.covariance + prior.means[:, :, None] * prior.means[:, None, :])
    ).sum(0)
    torch.testing.assert_close(z.T @ z / len(z) - mean[:, None] * mean, second - mean[:, None] * mean, atol=0.1, rtol=0)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(prior.sample(7, generator=g), prior.sample(7, generator=torch.Generator().manual_seed(5)))


def test_spread_scales_each_component_standard_deviation():
    """spread s: one Gaussian's draws have covariance s^2 * Sigma around the same mean."""
    prior = random_mixture(1, 3, seed=7)
    z = prior.sample(100_000, generator=torch.Generator().manual_seed(0), spread=0.5).double()
    torch.testing.assert_close(z.mean(0), prior.means[0], atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(z.T), 0.25 * prior.covariance[0], atol=0.03, rtol=0)
    with pytest.raises(ValueError, match="spread must be positive"):
        prior.sample(2, spread=0)


# ----------------------------------------------------------------------------- the conditional


def textbook(mean, cov, keep, z_kept):
    """mu_B + S_BA S_AA^-1 (z_A - mu_A), S_BB - S_BA S_AA^-1 S_AB with explicit inverses."""
    A, B = keep.nonzero()[:, 0], (~keep).nonzero()[:, 0]
    gain = cov[B][:, A] @ torch.linalg.inv(cov[A][:, A])
    return mean[B] + gain @ (z_kept - mean[A]), cov[B][:, B] - gain @ cov[A][:, B]


def test_conditional_of_one_gaussian_is_the_textbook_formula():
    prior = random_mixture(1, 5, seed=6)
    keep = torch.tensor([True, False, True, False, False])
    z = torch.tensor([0.5, 9.0, -1.0, 9.0, 9.0])  # the dims not kept are overwritten
    log_post, means, scale_tril = prior.conditional(z[keep], keep)
    want_mean, want_cov = textbook(prior.means[0], prior.covariance[0], keep, z[keep].double())
    torch.testing.assert_close(log_post, torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(means[0], want_mean, atol=1e-10, rtol=0)
    torch.testing.assert_close(scale_tril[0] @ scale_tril[0].T, want_cov, atol=1e-10, rtol=0)
    draws = prior.conditional_sample(z, keep, 200_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws[:, keep], z[keep].expand(200_000, -1))  # kept dims to the bit
    drawn = draws[:, ~keep].double()
    torch.testing.assert_close(drawn.mean(0), want_mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(drawn.T), want_cov, atol=0.02, rtol=0)


def test_conditional_component_posterior_and_means():
    prior = random_mixture(3, 4, seed=7)
    keep = torch.tensor([False, True, False, True])
    z_kept = torch.tensor([1.0, -2.0])
    log_post, means, scale_tril = prior.conditional(z_kept, keep)
    A = keep.nonzero()[:, 0]
    marginal = MultivariateNormal(prior.means[:, A], covariance_matrix=prior.covariance[:, A][:, :, A])
    unnormalised = prior.weights * marginal.log_prob(z_kept.double()).exp()
    torch.testing.assert_close(log_post.exp(), unnormalised / unnormalised.sum(), atol=1e-12, rtol=1e-9)
    for k in range(3):
        want_mean, want_cov = textbook(prior.means[k], prior.covariance[k], keep, z_kept.double())
        torch.testing.assert_close(means[k], want_mean, atol=1e-10, rtol=0)
        torch.testing.assert_close(scale_tril[k] @ scale_tril[k].T, want_cov, atol=1e-10, rtol=0)
    nothing_kept = prior.conditional(torch.zeros(0), torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(nothing_kept[0].exp(), prior.weights)


# ----------------------------------------------------------------------------- codes on spheres


def on_spheres(model, z):
    for zl in model.split_z(z):
        torch.testing.assert_close(zl.norm(dim=-1), torch.ones(zl.shape[:-1]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("spec", ["0:3", "0:8", "2:11", "0:4,12:16", "-5:", ":"])
def test_fitted_edits_keep_dims_and_spheres(fitted, spec):
    model = fitted
    torch.manual_seed(0)
    z = model.encode(corpus_sentences(1, seed=9))[0]
    index, _ = G.parse_dims(spec, z.numel())
    edited = G.edit_z(model, z, spec, 50)
    untouched = torch.ones(z.numel(), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(edited[:, untouched], z[untouched].expand(50, -1))
    assert (edited[:, index] != z[index]).all()
    on_spheres(model, edited)
    on_spheres(model, model.sample_prior(50))


def test_fitted_edit_draws_from_the_conditional(fitted, monkeypatch):
    """edit_z goes through FittedPrior.conditional_sample with the kept dims of z (then fill_spheres)."""
    model = fitted
    z = model.encode(corpus_sentences(1, seed=10))[0]
    seen = []
    real = P.FittedPrior.conditional_sample

    def spy(self, z_, keep, n, generator=None):
        seen.append((z_.clone(), keep.clone(), n))
        return real(self, z_, keep, n, generator)

    monkeypatch.setattr(P.FittedPrior, "conditional_sample", spy)
    G.edit_z(model, z, "2:11", 4)
    [(z_seen, keep, n)] = seen
    assert torch.equal(z_seen, z) and n == 4 and keep.tolist() == [i not in range(2, 11) for i in range(16)]
    G.edit_z(model, z, "2:11", 4, prior="uniform")
    assert len(seen) == 1  # uniform: the training prior, not the conditional


def test_euclidean_codes_are_not_projected():
    model = tiny_model("gaussian").eval()
    prior = P.fit_prior(model, source_ids(model, corpus_sentences(50)), n_components=2)
    assert prior.space == "euclidean"
    raw = prior._draw(prior.weights, prior.means, prior.scale_tril, 5, torch.Generator().manual_seed(0)).float()
    assert torch.equal(prior.sample(5, generator=torch.Generator().manual_seed(0)), raw)


def old_edit_z(model, z, index, n):
    """edit_z's uniform path as it was before the fitted prior (commit 66df5cd), the reference."""
    out = z.reshape(1, -1).expand(n, -1).clone()
    out[:, index] = model.sample_prior(n, prior="uniform")[:, index].to(out.dtype)
    k = model.config.z_dim
    for j in range(model.config.num_latent_layers):
        part = index[(index >= j * k) & (index < (j + 1) * k)]
        if 0 < part.numel() < k:
            keep = torch.ones(out.shape[1], dtype=torch.bool)
            keep[part] = False
            keep[: j * k] = keep[(j + 1) * k :] = False
            room = (1 - out[:, keep].pow(2).sum(-1, keepdim=True)).clamp_min(0).sqrt()
            out[:, part] = F.normalize(out[:, part], dim=-1) * room
    return out


def test_uniform_is_the_training_prior_exactly(fitted):
    model = fitted
    torch.manual_seed(0)
    got = model.sample_prior(6, prior="uniform")
    torch.manual_seed(0)
    want = torch.cat([model.family.prior(6, layer=j) for j in range(model.config.num_latent_layers)], dim=-1)
    assert torch.equal(got, want)
    z = model.encode(corpus_sentences(1, seed=11))[0]
    for spec in ("2:11", "0:8", "-5:"):
        torch.manual_seed(1)
        got = G.edit_z(model, z, spec, 5, prior="uniform")
        torch.manual_seed(1)
        assert torch.equal(got, old_edit_z(model, z, G.parse_dims(spec, 16)[0], 5))
    # auto (and fitted) draw from the fitted prior; fitted without one, or with a component, is an error
    draws = []
    for draw in (
        lambda: model.sample_prior(6),
        lambda: model.sample_prior(6, prior="fitted"),
        lambda: model.fitted_prior.sample(6, spread=P.SAMPLE_SPREAD),
    ):
        torch.manual_seed(2)
        draws.append(draw())
    assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2])
    with pytest.raises(ValueError, match="component"):
        model.sample_prior(2, prior="fitted", component=0)
    bare = tiny_model()
    with pytest.raises(ValueError, match="python -m univae.prior"):
        bare.sample_prior(2, prior="fitted")


def test_fit_prior_leaves_rng_and_mode_alone():
    model = tiny_model().train()
    ids = source_ids(model, corpus_sentences(60))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = P.fit_prior(model, ids, n_components=2, max_sentences=40, seed=4)
    assert torch.equal(state, torch.get_rng_state()) and model.training
    b = P.fit_prior(model, ids, n_components=2, max_sentences=40, seed=4)
    assert torch.equal(a.means, b.means) and torch.equal(a.scale_tril, b.scale_tril)
    assert a.info["n_sentences"] == 40 and a.info["n_codes"] == 40 and a.info["seed"] == 4
    c = P.fit_prior(model, ids, n_components=2, max_sentences=40, seed=5)
    assert not torch.equal(a.means, c.means)  # the seed picks the sentences and the samples


def test_vq_gets_no_fitted_prior():
    model = tiny_model("vq", codebook_size=16)
    with pytest.raises(ValueError, match="vq"):
        P.fit_prior(model, source_ids(model, corpus_sentences(10)))


# ----------------------------------------------------------------------------- file


def test_save_load_round_trip(fitted, tmp_path):
    model = fitted
    model.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [
        "config.json",
        "model.safetensors",
        "prior.safetensors",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    path = tmp_path / P.PRIOR_FILE
    assert set(load_file(path)) == {"weights", "means", "scale_tril"}  # safetensors and JSON, nothing pickled
    with safe_open(path, "pt") as f:
        header = json.loads(f.metadata()[P.HEADER_KEY])
    assert header["n_components"] == 3 and header["n_sentences"] == 200 and header["samples_per_sentence"] == 2
    loaded = univae.UniVAE.from_pretrained(str(tmp_path))
    for name in ("weights", "means", "scale_tril"):
        assert torch.equal(getattr(loaded.fitted_prior, name), getattr(model.fitted_prior, name))
    assert loaded.fitted_prior.info == model.fitted_prior.info and loaded.fitted_prior.space == "sphere"
    a, za = model.sample(4, seed=0, return_z=True)
    b, zb = loaded.sample(4, seed=0, return_z=True)
    assert a == b and torch.equal(za, zb)
    assert torch.equal(
        model.edit(["今天天气很好"], "0:5", 3, seed=1, return_z=True)[1],
        loaded.edit(["今天天气很好"], "0:5", 3, seed=1, return_z=True)[1],
    )
    # a model without one saved over the directory takes the stale prior away with it
    bare = tiny_model()
    bare.save_pretrained(tmp_path)
    assert not path.exists() and univae.UniVAE.from_pretrained(str(tmp_path)).fitted_prior is None


def test_bad_prior_files(fitted, tmp_path):
    fitted.save_pretrained(tmp_path)
    path = tmp_path / P.PRIOR_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="prior.safetensors") as e:
        univae.UniVAE.from_pretrained(str(tmp_path))
    assert "\n" not in str(e.value) and "python -m univae.prior" in str(e.value)
    other = tiny_model("gaussian")
    other.fitted_prior = P.fit_prior(other, source_ids(other, corpus_sentences(20)), n_components=1)
    other.fitted_prior.save(str(path))  # a prior for Gaussian codes beside vMF weights
    with pytest.raises(ValueError, match="prior.safetensors.*euclidean"):
        univae.UniVAE.from_pretrained(str(tmp_path))


# ----------------------------------------------------------------------------- python -m univae.prior


@pytest.fixture
def trained_dir(tmp_path):
    """A checkpoint dir as train.py leaves it: weights plus train_args.json naming a corpus file."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_sentences(150, seed=1)) + "\n", encoding="utf-8")
    directory = tmp_path / "ckpt"
    tiny_model().save_pretrained(directory)
    (directory / "train_args.json").write_text(
        json.dumps({"corpus": str(corpus), "text_field": "text", "split_seed": 3, "val": None})
    )
    return directory, corpus


def test_command_fits_on_the_train_split(trained_dir, capsys):
    directory, corpus = trained_dir
    assert prior_command.main(["--checkpoint", str(directory), "--components", "2", "--seed", "1"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and "2 components" in out and "held-out" in out, out
    prior = univae.UniVAE.from_pretrained(str(directory)).fitted_prior
    sentences, _ = load_sentences(str(corpus), limit=univae.preset("debug").maxlen - 2)
    n_train = len(split(sentences, seed=3)["train"])
    assert prior.n_components == 2 and prior.info["n_sentences"] == n_train and prior.info["seed"] == 1
    assert prior.info["source"] == f"train split (seed 3) of {corpus}" and prior.info["heldout_n_sentences"] == 3
    assert not (directory / "prior.safetensors.tmp").exists()


@pytest.mark.parametrize(
    "case, message",
    [
        ("no train_args", "train_args.json"),
        ("missing corpus", "no such file"),
        ("vq", "vq"),
        ("too many components", "needs at least"),
        ("bad flag", "--components"),
        ("not a dir", "not a directory"),
    ],
)
def test_command_errors_are_one_line(trained_dir, capsys, case, message):
    directory, corpus = trained_dir
    argv = ["--checkpoint", str(directory), "--components", "2"]
    if case == "no train_args":
        os.remove(directory / "train_args.json")
    elif case == "missing corpus":
        os.remove(corpus)
    elif case == "vq":
        tiny_model("vq", codebook_size=16).save_pretrained(directory)
    elif case == "too many components":
        argv = ["--checkpoint", str(directory), "--components", "500"]
    elif case == "bad flag":
        argv = ["--checkpoint", str(directory), "--components", "0"]
    elif case == "not a dir":
        argv = ["--checkpoint", str(directory / "nothing")]
    assert prior_command.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and message in err, err
    assert not (directory / "prior.safetensors").exists()
