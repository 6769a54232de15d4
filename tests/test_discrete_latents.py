"""VQ and Gaussian-mixture latents: quantisation, straight-through gradients and the EMA codebook
against hand computations; the mixture's KL, dispersion and MI terms against closed forms and
Monte-Carlo estimates; the model, objective and diagnostics around them."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import random_joined
from torch.distributions import Categorical, MixtureSameFamily, Normal, kl_divergence

from univae import generate as G
from univae.config import TrainConfig, preset
from univae.diagnostics import collapse_warning, latent_metrics, mutual_information
from univae.latents import VQ, GaussianMixture
from univae.model import UniVAE
from univae.objective import VAEObjective
from univae.tokenizer import SPECIAL_TOKENS, build_tokenizer

CHARS = [chr(0x4E00 + i) for i in range(256 - len(SPECIAL_TOKENS))]


def tiny(latent, **overrides):
    torch.manual_seed(0)
    return UniVAE(preset("debug", latent=latent, **overrides), build_tokenizer(SPECIAL_TOKENS + CHARS))


# ----------------------------------------------------------------------------- VQ


@pytest.mark.parametrize("distance", ["l2", "cosine"])
def test_vq_picks_the_nearest_code(distance):
    torch.manual_seed(0)
    family = VQ(2, 4, 16, distance=distance)
    h = torch.randn(50, 4)
    for layer in (0, 1):
        e = family.codebook[layer]
        if distance == "l2":
            expected = torch.cdist(h, e).argmin(-1)
        else:  # the largest cosine
            expected = (F.normalize(h, dim=-1) @ F.normalize(e, dim=-1).T).argmax(-1)
        codes = family.codes(h, layer)
        assert torch.equal(codes, expected) and codes.dtype == torch.long
        vectors = e[expected] if distance == "l2" else F.normalize(e[expected], dim=-1)
        assert torch.equal(family.mean(h, layer), vectors) and torch.equal(family.snap(h, layer), vectors)
        assert torch.equal(family.codes(vectors, layer), expected)  # a code is its own nearest code


def test_vq_gradients_pass_straight_through():
    torch.manual_seed(0)
    family = VQ(1, 4, 8)
    h = torch.randn(5, 4, requires_grad=True)
    w = torch.randn(5, 4)
    z = family.mean(h, 0)
    (z * w).sum().backward()
    torch.testing.assert_close(h.grad, w)  # dz/dh = I although z = e_c
    # the commitment |h - sg(e_c)|^2 / z_dim, batch mean: gradient 2 (h - e_c) / (B z_dim), none to the codes
    h.grad = None
    commitment = family.batch_terms([h], [z])["commitment"]
    e = family.codebook[0][family.codes(h, 0)]
    torch.testing.assert_close(commitment, ((h - e) ** 2).mean())
    commitment.backward()
    torch.testing.assert_close(h.grad, 2 * (h - e).detach() / 20)
    # cosine: the gradient passes straight through to the normalised vector
    cos = VQ(1, 4, 8, distance="cosine")
    h2 = h.detach().clone().requires_grad_()
    (cos.mean(h2, 0) * w).sum().backward()
    h3 = h.detach().clone().requires_grad_()
    (F.normalize(h3, dim=-1) * w).sum().backward()
    torch.testing.assert_close(h2.grad, h3.grad)


def test_vq_ema_update_matches_its_formula_on_a_hand_made_batch():
    family = VQ(1, 2, 3, decay=0.9, dead_steps=2, eps=1e-5).train()
    e = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 9.0]])
    family.codebook[0] = e
    family.ema_count[0] = torch.tensor([2.0, 1.0, 0.5])
    family.ema_sum[0] = e * torch.tensor([2.0, 1.0, 0.5])[:, None]
    family.unused_steps[0] = torch.tensor([5, 0, 1])  # code 2 dies if this batch does not pick it
    h = torch.tensor([[0.5, 0.0], [-0.5, 1.0], [3.0, 1.0], [0.0, 0.5]])  # codes 0, 0, 1, 0
    torch.manual_seed(0)
    z = family.sample(h, 0)
    torch.testing.assert_close(z, e[[0, 0, 1, 0]])  # quantised with the codebook before the update

    n = torch.tensor([3.0, 1.0, 0.0])
    s = torch.tensor([[0.0, 1.5], [3.0, 1.0], [0.0, 0.0]])
    N = 0.9 * torch.tensor([2.0, 1.0, 0.5]) + 0.1 * n  # 2.1, 1.0, 0.45
    m = 0.9 * e * torch.tensor([2.0, 1.0, 0.5])[:, None] + 0.1 * s
    smoothed = (N + 1e-5) / (N.sum() + 3e-5) * N.sum()
    expected = m / smoothed[:, None]
    torch.testing.assert_close(family.codebook[0][:2], expected[:2])
    torch.testing.assert_close(family.ema_count[0][:2], N[:2])
    torch.testing.assert_close(family.ema_sum[0][:2], m[:2])
    assert family.unused_steps[0].tolist() == [0, 0, 0]
    # code 2 was unused for 2 steps: re-seeded with a batch row
    seed = family.codebook[0][2]
    assert any(torch.equal(seed, row) for row in h) and torch.equal(family.ema_sum[0][2], seed)
    assert family.ema_count[0][2] == 1.0 and family.restarts.tolist() == [1]
    # eval mode: quantise only
    before = family.codebook.clone()
    family.eval().sample(h, 0)
    assert torch.equal(family.codebook, before)


def test_a_fresh_codebook_is_seeded_by_the_first_batch():
    torch.manual_seed(0)
    family = VQ(1, 4, 8, dead_steps=10).train()
    h = torch.randn(6, 4) + 10
    picked = family.codes(h, 0).unique()
    family.sample(h, 0)
    reseeded = [k for k in range(8) if k not in picked.tolist()]
    assert family.restarts.item() == len(reseeded)
    for k in reseeded:
        assert any(torch.equal(family.codebook[0][k], row) for row in h)


def test_vq_model_codes_round_trip_and_generation(tmp_path):
    model = tiny("vq", codebook_size=32).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for seed in range(3):  # training forwards move the codebooks (EMA, restarts)
        ids, tt = random_joined(model, B=8, seed=seed)
        out = model(ids, tt)
        torch.testing.assert_close(out.loss, out.ce + 0.25 * out.commitment)
        assert out.kl.item() == pytest.approx(2 * math.log(32)) and out.kl_per_dim is None
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert model.family.restarts.sum() > 0
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = UniVAE.from_pretrained(str(tmp_path)).eval()
    for name in ("codebook", "ema_count", "ema_sum", "unused_steps", "restarts"):
        assert torch.equal(getattr(loaded.family, name), getattr(model.family, name)), name
    with torch.no_grad():
        assert torch.equal(loaded(ids, tt).logits, model(ids, tt).logits)

    texts = ["一丁七", "万丈三上", "下丌不与丐"]
    codes = model.encode_codes(texts)
    assert codes.shape == (3, 2) and codes.dtype == torch.long
    z = model.encode(texts)
    assert torch.equal(model.codes_to_z(codes), z)  # the posterior mean is the code vector, exactly
    assert torch.equal(model.z_to_codes(z), codes)
    assert model.decode_codes(codes) == model.reconstruct(texts)
    assert model.decode_codes(codes, use_cache=False) == model.generate(z)  # cached == recompute
    for bad, match in (([[1, 2, 3]], "shape"), ([[0, 32]], "in \\[0, 31\\]"), ([[-1, 0]], "in \\[0, 31\\]")):
        with pytest.raises(ValueError, match=match):
            model.codes_to_z(bad)
    with pytest.raises(ValueError, match="--latent vq"):
        tiny("vmf").encode_codes(texts)

    # latent arithmetic stays on the codebook; edits act on whole code positions
    path = G.interpolate_z(model, z[0], z[1], 5)
    assert torch.equal(path[0], z[0]) and torch.equal(path[-1], z[1])
    torch.testing.assert_close(model.codes_to_z(model.z_to_codes(path)), path)
    torch.testing.assert_close(G.analogy_z(model, z[0], z[0], z[2]), z[2])
    torch.manual_seed(0)
    edited = G.edit_z(model, z[0], "1", 6)
    assert torch.equal(edited[:, :8], z[0, :8].expand(6, -1))
    assert torch.equal(model.codes_to_z(model.z_to_codes(edited)), edited) and G.edit_size(model) == 2
    around = G.perturb_z(model, z[:1], 50, 1e3)  # a hot code distribution: other codes too
    assert torch.equal(G.perturb_z(model, z[:1], 3, 0.0), z[:1].expand(3, -1))
    assert len(set(map(tuple, model.z_to_codes(around).tolist()))) > 1
    assert len(model.sample(2)) == 2 and len(model.analogy(*texts, n=3)) == 3


def test_vq_objective_and_diagnostics():
    model = tiny("vq", codebook_size=16).train()
    ids, tt = random_joined(model, B=8, seed=1)
    out = model(ids, tt)
    loss, logs = VAEObjective(TrainConfig(), model)(out, step=0)
    torch.testing.assert_close(loss, out.ce + 0.25 * out.commitment)
    assert set(logs) == {"loss", "ce", "kl", "commitment"}
    for flags in (dict(free_bits=0.5), dict(kl_weight=0.5), dict(dispersion_weight=1.0)):
        with pytest.raises(ValueError, match="constant KL|--latent gmm"):
            VAEObjective(TrainConfig(**flags), model)
    # usage: 4 sentences on codes {a, a, b, c} of one layer -> perplexity exp(H(1/2, 1/4, 1/4)), 3 of 16 used
    # (a fresh codebook: after training restarts, duplicate codes may exist, and a vector picks the first)
    torch.manual_seed(0)
    family = VQ(2, 8, 16)
    vectors = family.vectors(0)[[3, 3, 5, 9]]
    metrics = family.usage_metrics([vectors])["codebook"]
    h = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert metrics["perplexity"] == [pytest.approx(math.exp(h))] and metrics["used_fraction"] == [3 / 16]
    mi, per_layer = mutual_information(family, [vectors, family.vectors(1)[[0, 0, 1, 1]]])
    assert per_layer == [pytest.approx(h), pytest.approx(math.log(2))]  # H(codes): the encoder is deterministic
    assert mi == pytest.approx(h)  # tuples (3,0) (3,0) (5,1) (9,1): the same split as layer 0
    one_code = latent_metrics(family, [family.vectors(0)[[3] * 4], family.vectors(1)[[0] * 4]])
    assert one_code["codebook"]["perplexity"] == [1.0, 1.0]
    assert "use about one code" in collapse_warning(one_code, model.config)


# ----------------------------------------------------------------------------- the mixture


def random_mixture(components=3, z_dim=4, layers=2, seed=0):
    torch.manual_seed(seed)
    family = GaussianMixture(layers, z_dim, components)
    with torch.no_grad():
        family.prior_logvar.normal_(0, 0.5)
    return family


def test_dispersion_is_nonnegative_and_zero_when_the_components_are_equal():
    family = random_mixture()
    params = torch.randn(64, 4 + 4 + 3) * 2
    d = family.dispersion(params, 0)
    assert d.shape == (64,) and bool((d >= 0).all()) and d.max() > 0.1
    # DEM-VAE's identity: sum_c q_c KL(q || p_c) = KL(q || p_{eta_bar}) + dispersion (float64: a difference of KLs)
    mu, logvar = (x.double() for x in family.split(params))
    q = family.component_log_probs(params).exp().double()
    post = Normal(mu[:, None], (0.5 * logvar[:, None]).exp())
    m, s = family.prior_mean[0].detach().double(), family.prior_logvar[0].detach().double()
    expected_kl = (q * kl_divergence(post, Normal(m, (0.5 * s).exp())).sum(-1)).sum(-1)
    precision = (q[..., None] * (-s).exp()).sum(1)
    bar = Normal((q[..., None] * (-s).exp() * m).sum(1) / precision, precision.rsqrt())
    torch.testing.assert_close(
        expected_kl - kl_divergence(Normal(mu, (0.5 * logvar).exp()), bar).sum(-1),
        family.dispersion(params, 0).double(),
        atol=1e-5,
        rtol=1e-4,
    )
    # all components equal (or one component carrying all of q(c|x)): no dispersion
    with torch.no_grad():
        family.prior_mean[1] = family.prior_mean[1, :1]
        family.prior_logvar[1] = family.prior_logvar[1, :1]
    torch.testing.assert_close(family.dispersion(params, 1), torch.zeros(64), atol=1e-6, rtol=0)
    one_hot = torch.cat([params[:, :8], torch.tensor([[50.0, 0.0, 0.0]]).expand(64, 3)], -1)
    torch.testing.assert_close(family.dispersion(one_hot, 0), torch.zeros(64), atol=1e-5, rtol=0)


def test_mixture_elbo_terms_match_a_monte_carlo_estimate():
    family = random_mixture()
    torch.manual_seed(1)
    params = torch.randn(3, 4 + 4 + 3)
    with torch.no_grad():
        kl = family.kl(params, layer=1)
        torch.testing.assert_close(kl, family.kl_c(params) + family.kl_per_dim(params, 1).sum(-1))
        # kl = E_{q(c|x) q(z|x)}[log q(c|x) + log q(z|x) - log p(c) - log p(z|c)]
        S = 200_000
        c = Categorical(logits=params[:, 8:]).sample((S,))  # (S, 3)
        z = family.sample(params.expand(S, 3, 11))
        m, s = family.prior_mean[1][c], family.prior_logvar[1][c]  # (S, 3, 4)
        log_p = math.log(1 / 3) + Normal(m, (0.5 * s).exp()).log_prob(z).sum(-1)
        log_q = family.component_log_probs(params).gather(-1, c.T).T + family.log_q(z, params)
        torch.testing.assert_close((log_q - log_p).mean(0), kl, atol=0.03, rtol=0.01)
        # the marginal prior log p(z) against torch's mixture; KL to it is at most the joint KL above
        mixture = MixtureSameFamily(
            Categorical(logits=torch.zeros(3)),
            torch.distributions.Independent(Normal(family.prior_mean[1], (0.5 * family.prior_logvar[1]).exp()), 1),
        )
        torch.testing.assert_close(family.log_prior(z[:100], 1), mixture.log_prob(z[:100]))
        marginal_kl = (family.log_q(z, params) - family.log_prior(z, 1)).mean(0)
        assert bool((marginal_kl <= kl + 0.03).all())
        # batch terms: mean kl_c = KL(q(c) || p(c)) + I(x; c), and dispersion is the batch mean
        batch = torch.randn(16, 11) * 2
        terms = family.batch_terms([batch], None)
        q_bar = family.component_log_probs(batch).exp().mean(0)
        agg = (q_bar * (q_bar * 3).log()).sum()
        torch.testing.assert_close(family.kl_c(batch).mean(), agg + terms["mi_c"])
        torch.testing.assert_close(terms["kl_c"], family.kl_c(batch).mean())
        torch.testing.assert_close(terms["dispersion"].sum(), family.dispersion(batch, 0).mean())  # one layer: layer 0
        # per dim, the dispersion is part of the z part's KL: KL_d = KL(q_d || p_{eta_bar}, d) + dispersion_d
        assert bool((family.dispersion_per_dim(batch, 1) <= family.kl_per_dim(batch, 1) + 1e-5).all())


def test_mixture_prior_and_components():
    family = random_mixture()
    torch.manual_seed(0)
    draws = family.prior(20_000, layer=0, component=2)
    torch.testing.assert_close(draws.mean(0), family.prior_mean[0, 2].detach(), atol=0.05, rtol=0)
    torch.testing.assert_close(draws.var(0), family.prior_logvar[0, 2].detach().exp(), atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match="in \\[0, 2\\]"):
        family.prior(2, layer=0, component=3)
    model = tiny("gmm", mixture_components=4).eval()
    z = model.sample_prior(3, component=[1, 3])
    assert z.shape == (3, 16) and not z.requires_grad
    with pytest.raises(ValueError, match="--latent gmm"):
        tiny("gaussian").sample_prior(2, component=0)
    assert len(model.sample(2, component=1)) == 2 and model.encode_components(["一丁"]).shape == (1, 2)


def test_mixture_model_and_objective(tmp_path):
    model = tiny("gmm", mixture_components=3).train()
    ids, tt = random_joined(model, B=8, seed=2)
    torch.manual_seed(0)
    out = model(ids, tt)
    tokens = out.n_tokens / 8
    torch.testing.assert_close(out.loss, out.ce + out.kl / tokens)  # -ELBO per token
    torch.testing.assert_close(out.kl, out.kl_per_dim.sum() + out.kl_c, atol=1e-4, rtol=1e-5)
    loss, logs = VAEObjective(TrainConfig(dispersion_weight=1.0, mi_weight=1.0), model)(out, step=0)
    torch.testing.assert_close(loss, out.loss)  # both weights 1: the plain ELBO
    loss, logs = VAEObjective(TrainConfig(mi_weight=0.0), model)(out, step=0)  # DEM-VAE, --use_mutual
    torch.testing.assert_close(loss, out.ce + (out.kl - 0.8 * out.dispersion.sum() - out.mi_c) / tokens)
    assert {"dispersion", "mi_c"} <= set(logs)
    loss, logs = VAEObjective(TrainConfig(free_bits=1.0), model)(out, step=0)
    rate = (out.kl_per_dim - 0.8 * out.dispersion).clamp_min(1.0).sum() + out.kl_c  # the floor after the reweighing
    torch.testing.assert_close(loss, out.ce + rate / tokens)
    assert out.dispersion.shape == (2, 8) and bool((out.dispersion <= out.kl_per_dim + 1e-5).all())
    # no weight decay on the prior; the checkpoint keeps it
    from univae.training import param_groups

    decayed = {id(p) for p in param_groups(model, 0.1)[0]["params"]}
    assert id(model.family.prior_mean) not in decayed and id(model.down[0].weight) in decayed
    model.save_pretrained(tmp_path)
    loaded = UniVAE.from_pretrained(str(tmp_path))
    assert torch.equal(loaded.family.prior_mean, model.family.prior_mean) and loaded.down[0].out_features == 19
    with pytest.raises(ValueError, match="--latent gmm"):
        VAEObjective(TrainConfig(mi_weight=0.0), tiny("gaussian"))
    # diagnostics: the mixture sub-dict, and a warning when c says nothing about the sentence
    params = [p.detach() for p in model.posterior_params(ids[:, :16])]
    mx = latent_metrics(model.family, params)["mixture"]
    assert len(mx["usage"]) == 2 and sum(mx["usage"][0]) == pytest.approx(1.0)
    assert mx["dispersion"][1] == pytest.approx(model.family.dispersion(params[1], 1).mean().item())
    assert mx["mi_c"][1] == pytest.approx(model.family.component_mi(params[1]).item())
    assert 0 <= mx["usage_entropy"][0] <= math.log(3) + 1e-6 and mx["mean_spread"][0] > 0
    warning = collapse_warning({"mixture": {"mi_c": [0.0, 0.5]}}, model.config)
    assert "layer(s) [0]" in warning and "--dispersion-weight" in warning
