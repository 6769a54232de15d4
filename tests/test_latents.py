"""Gaussian latents, the VAE objective's remedies for posterior collapse, and the collapse diagnostics.

Every number is checked against a closed form, a reference implementation or a hand computation."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import random_joined
from torch.distributions import Normal, kl_divergence

from univae.config import TrainConfig, preset
from univae.diagnostics import (
    active_units,
    collapse_warning,
    expected_codes,
    kl_per_dim,
    latent_metrics,
    mutual_information,
)
from univae.latents import FAMILIES, VMF, Gaussian, family_class, make_family
from univae.model import UniVAE
from univae.objective import VAEObjective, char_class_token_masks, kl_anneal_weight
from univae.tokenizer import SPECIAL_TOKENS, build_tokenizer
from univae.vmf import log_sphere_area, vmf_mean_cosine

CHARS = [chr(0x4E00 + i) for i in range(256 - len(SPECIAL_TOKENS))]


def tiny(latent="gaussian", with_mask=True):
    torch.manual_seed(0)
    vocab = SPECIAL_TOKENS + CHARS if with_mask else SPECIAL_TOKENS[:4] + CHARS + ["x"]
    return UniVAE(preset("debug", latent=latent), build_tokenizer(vocab))


def fake_out(kl_per_dim, ce=2.0, n_tokens=30, B=3, z=None, labels=None):
    """A UniVAEOutput stand-in carrying just what VAEObjective reads."""
    return SimpleNamespace(
        ce=torch.tensor(ce),
        kl=kl_per_dim.sum(),
        kl_per_dim=kl_per_dim,
        n_tokens=torch.tensor(n_tokens),
        labels=torch.zeros(B, 4, dtype=torch.long) if labels is None else labels,
        z=z,
        commitment=None,
        kl_c=None,
        dispersion=None,
        mi_c=None,
    )


# ----------------------------------------------------------------------------- the Gaussian family


def test_gaussian_kl_and_log_q_against_torch_and_monte_carlo():
    torch.manual_seed(0)
    family = Gaussian(4)
    params = torch.randn(3, 8)
    mu, std = params[:, :4], (0.5 * params[:, 4:]).exp()
    torch.testing.assert_close(family.kl(params), kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1))
    torch.testing.assert_close(family.kl_per_dim(params).sum(-1), family.kl(params))
    z = torch.randn(5, 3, 4)
    torch.testing.assert_close(family.log_q(z, params), Normal(mu, std).log_prob(z).sum(-1))
    # KL = E_q[log q(z|x) - log p(z)], sampled
    z = family.sample(params.expand(100_000, 3, 8))
    mc = (family.log_q(z, params) - Normal(0.0, 1.0).log_prob(z).sum(-1)).mean(0)
    torch.testing.assert_close(mc, family.kl(params), atol=0.03, rtol=0.01)
    torch.testing.assert_close(family.expected_z(params), z.mean(0), atol=0.02, rtol=0)


def test_gaussian_sample_is_reparameterised():
    torch.manual_seed(0)
    family = Gaussian(4)
    params = torch.randn(3, 8, requires_grad=True)
    z = family.sample(params)
    z.sum().backward()
    mu, logvar = params.detach()[:, :4], params.detach()[:, 4:]
    # z = mu + exp(logvar / 2) eps: dz/dmu = 1, dz/dlogvar = (z - mu) / 2
    torch.testing.assert_close(params.grad[:, :4], torch.ones(3, 4))
    torch.testing.assert_close(params.grad[:, 4:], 0.5 * (z.detach() - mu))
    eps = (z.detach() - mu) / (0.5 * logvar).exp()
    assert eps.abs().max() < 6 and eps.std() > 0.3  # the noise really is standard normal draws


def test_gaussian_model_forward_terms_and_round_trip(tmp_path):
    model = tiny().eval()
    ids, tt = random_joined(model, seed=1, lengths=[3, 7, 10, 1])
    with torch.no_grad():
        out = model(ids, tt)
    params = model.posterior_params(ids[:, : model.config.maxlen])
    per_dim = torch.stack([model.family.kl_per_dim(p).mean(0) for p in params])
    torch.testing.assert_close(out.kl_per_dim, per_dim, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.kl, per_dim.sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kl_per_dim(model.family, params), per_dim)
    B = ids.shape[0]
    torch.testing.assert_close(out.loss, out.ce + out.kl * B / out.n_tokens)  # -ELBO per token
    torch.testing.assert_close(out.mu, torch.cat([p[:, :8] for p in params], -1), atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = UniVAE.from_pretrained(str(tmp_path)).eval()
    assert loaded.config.latent == "gaussian" and loaded.down[0].out_features == 16
    with torch.no_grad():
        assert torch.equal(loaded(ids, tt).logits, out.logits)
    assert len(model.sample(2)) == 2  # generate.py decodes Gaussian prior draws


# ----------------------------------------------------------------------------- the objective


def test_objective_keeps_the_vmf_loss_and_rejects_kl_flags():
    model = tiny("vmf").train()
    ids, tt = random_joined(model, seed=2)
    out = model(ids, tt)
    loss, logs = VAEObjective(TrainConfig(), model)(out, step=0)
    assert loss is out.ce and torch.equal(out.loss, out.ce)
    assert set(logs) == {"loss", "ce", "kl"}
    for flags in (
        dict(free_bits=0.5),
        dict(kl_anneal="linear", kl_anneal_steps=10),
        dict(target_rate=5.0),
        dict(kl_weight=0.5),
    ):
        with pytest.raises(ValueError, match="constant KL"):
            VAEObjective(TrainConfig(**flags), model)
    objective = VAEObjective(TrainConfig(bow_weight=0.5), model)
    loss, logs = objective(out, step=0)
    torch.testing.assert_close(loss, out.ce + 0.5 * objective.bow_loss(out.z, out.labels))


def test_objective_normalisation_and_schedule():
    model = tiny().train()
    ids, tt = random_joined(model, seed=3, lengths=[3, 7, 10, 1])
    torch.manual_seed(0)
    out = model(ids, tt)
    tokens = out.n_tokens / ids.shape[0]
    loss, logs = VAEObjective(TrainConfig(), model)(out, step=0)
    torch.testing.assert_close(loss, out.loss)  # defaults: the negative ELBO per token
    loss, _ = VAEObjective(TrainConfig(kl_reduction="per-sentence", kl_weight=0.3), model)(out, step=0)
    torch.testing.assert_close(loss, out.ce + 0.3 * out.kl)
    objective = VAEObjective(TrainConfig(kl_anneal="linear", kl_anneal_steps=10, kl_weight=2.0), model)
    loss, logs = objective(out, step=4)
    assert logs["kl_weight"] == pytest.approx(0.8)
    torch.testing.assert_close(loss, out.ce + 0.8 * out.kl / tokens)


def optimus_cycles(n_iter, n_cycle, ratio_increase, ratio_zero):
    """Optimus' frange_cycle_zero_linear (start 0, stop 1), the reference for the cyclical schedule."""
    L = [1.0] * n_iter
    period = n_iter / n_cycle
    step = 1.0 / (period * ratio_increase)
    for c in range(n_cycle):
        v, i = 0.0, 0
        while v <= 1.0 and int(i + c * period) < n_iter:
            if i < period * ratio_zero:
                L[int(i + c * period)] = 0.0
            else:
                L[int(i + c * period)] = v
                v += step
            i += 1
    return L


def test_kl_anneal_schedules():
    assert [kl_anneal_weight(s) for s in (0, 5, 10**6)] == [1.0, 1.0, 1.0]
    assert [kl_anneal_weight(s, "linear", 10) for s in (0, 5, 9, 10, 50)] == [0.0, 0.5, 0.9, 1.0, 1.0]
    # 2 cycles of 50 steps: 25 at 0, 12.5 ramping, the rest at 1; then 1 for good
    hand = {
        0: 0.0,
        24: 0.0,
        25: 0.0,
        30: 0.4,
        37: 0.96,
        38: 1.0,
        49: 1.0,
        50: 0.0,
        74: 0.0,
        80: 0.4,
        99: 1.0,
        100: 1.0,
        500: 1.0,
    }
    for step, w in hand.items():
        assert kl_anneal_weight(step, "cyclical", 100, 2, 0.5, 0.25) == pytest.approx(w, abs=1e-12), step
    for n, cycles, inc, zero in ((100, 2, 0.25, 0.5), (120, 4, 0.5, 0.3), (90, 1, 0.5, 0.0)):
        ours = [kl_anneal_weight(s, "cyclical", n, cycles, zero, inc) for s in range(n)]
        assert ours == pytest.approx(optimus_cycles(n, cycles, inc, zero), abs=1e-9)


def test_free_bits_value_and_exactly_zero_gradient_below_the_floor():
    model = tiny()
    family = model.family
    torch.manual_seed(0)
    params = torch.cat([torch.randn(3, 8) * torch.linspace(0, 2, 8), torch.zeros(3, 8)], -1).requires_grad_()
    per_dim = family.kl_per_dim(params).mean(0)[None].expand(2, 8)  # two "layers" sharing the params
    floor = 0.5
    assert (per_dim[0] < floor).any() and (per_dim[0] > floor).any()
    objective = VAEObjective(TrainConfig(free_bits=floor), model)
    out = fake_out(per_dim, n_tokens=30, B=3)
    loss, logs = objective(out, step=0)
    expected = 2.0 + torch.maximum(per_dim, torch.tensor(floor)).sum() / 10
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["kl_free_bits"], torch.maximum(per_dim, torch.tensor(floor)).sum())
    loss.backward()
    below = per_dim[0].detach() < floor
    assert torch.all(params.grad[:, :8][:, below] == 0) and torch.all(params.grad[:, 8:][:, below] == 0)
    assert torch.all(params.grad[:, :8][:, ~below] != 0)


def test_mdr_multiplier_rises_below_the_target_and_falls_to_zero_above():
    model = tiny()
    objective = VAEObjective(TrainConfig(target_rate=5.0, mdr_lr=0.1), model)
    assert float(objective.mdr_multiplier) == 0.0 and "mdr_multiplier" in objective.state_dict()
    for kl, expected in ((2.0, 0.3), (2.0, 0.6), (4.0, 0.7), (10.0, 0.2), (20.0, 0.0), (4.0, 0.1)):
        objective.update_multiplier(torch.tensor(kl))
        assert float(objective.mdr_multiplier) == pytest.approx(expected), kl
    objective.mdr_multiplier.fill_(3.0)
    per_dim = torch.full((2, 8), 0.125, requires_grad=True)  # KL 2 nats, under the target
    loss, logs = objective(fake_out(per_dim, n_tokens=30, B=3), step=0)
    torch.testing.assert_close(loss, torch.tensor(2.0 + (1.0 * 2.0 + 3.0 * (5.0 - 2.0)) / 10))
    loss.backward()
    # d loss / d kl = (beta - multiplier) / tokens < 0: the multiplier pushes the rate up
    torch.testing.assert_close(per_dim.grad, torch.full((2, 8), (1.0 - 3.0) / 10))
    assert logs["mdr_multiplier"] == 3.0


def test_bow_loss_matches_a_manual_computation():
    model = tiny()
    objective = VAEObjective(TrainConfig(bow_weight=1.0), model)
    torch.manual_seed(0)
    for head in objective.bow:
        torch.nn.init.normal_(head.weight, std=0.5)
        torch.nn.init.normal_(head.bias)
    z = torch.randn(2, 16)
    labels = torch.tensor([[7, 9, 9, 3, -100], [11, 3, -100, -100, -100]])
    per_layer = []
    for j, head in enumerate(objective.bow):
        nll = []
        for b in range(2):
            logits = head.weight @ z[b, 8 * j : 8 * (j + 1)] + head.bias
            log_p = logits - torch.logsumexp(logits, 0)
            nll += [-log_p[w] for w in labels[b].tolist() if w != -100]
        per_layer.append(sum(nll) / len(nll))
    torch.testing.assert_close(objective.bow_loss(z, labels), sum(per_layer) / 2)


def test_bow_layers_restrict_the_loss_to_the_chosen_latent_layers():
    model = tiny()  # 2 latent layers of 8 dims
    objective = VAEObjective(TrainConfig(bow_weight=1.0, bow_layers="-1"), model)
    assert objective.bow_layers == [1] and len(objective.bow) == 1
    torch.manual_seed(0)
    torch.nn.init.normal_(objective.bow[0].weight, std=0.5)
    z = torch.randn(2, 16, requires_grad=True)
    labels = torch.tensor([[7, 9, 9, 3, -100], [11, 3, -100, -100, -100]])
    head = objective.bow[0]
    nll = []
    for b in range(2):
        log_p = torch.log_softmax(head.weight @ z[b, 8:] + head.bias, 0)
        nll += [-log_p[w] for w in labels[b].tolist() if w != -100]
    loss = objective.bow_loss(z, labels)
    torch.testing.assert_close(loss, sum(nll) / len(nll))
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.all(grad[:, :8] == 0) and torch.any(grad[:, 8:] != 0)  # the lowest layer's code is left alone
    assert VAEObjective(TrainConfig(bow_weight=1.0, bow_layers="0,-2"), model).bow_layers == [0]


def test_char_class_token_masks_are_the_evaluations_character_classes():
    """4 sentences: CHARS[0] is in every one and most occurrences (IDF 0 = the median: pattern),
    CHARS[1..4] and 'x' each in one (IDF log 4: content); '，' is punctuation (pattern); specials are
    in neither class."""
    a, b, c, d, e = CHARS[:5]
    tok = build_tokenizer(SPECIAL_TOKENS + [a, b, c, d, e, "，", "##x"])
    sentences = [a * 4 + b, a * 4 + c + "，", a * 4 + d, a * 4 + e + "x"]
    masks = char_class_token_masks(tok, sentences)
    vocab = tok.get_vocab()
    assert {t for t, i in vocab.items() if masks["content"][i]} == {b, c, d, e, "##x"}  # x: df 1, like b..e
    assert {t for t, i in vocab.items() if masks["pattern"][i]} == {a, "，"}


def masks_of(model, content=(), pattern=()):
    masks = {kind: torch.zeros(model.config.vocab_size, dtype=torch.bool) for kind in ("content", "pattern")}
    masks["content"][list(content)] = True
    masks["pattern"][list(pattern)] = True
    return masks


def bow_nll(head, z_l, words):
    """Mean of -log softmax(head(z_l[b]))[w] over the (b, w) pairs, written out."""
    nll = [-torch.log_softmax(head.weight @ z_l[b] + head.bias, 0)[w] for b, w in words]
    return sum(nll) / len(nll)


def test_bow_chars_content_counts_only_the_content_tokens():
    model = tiny()
    objective = VAEObjective(TrainConfig(bow_weight=1.0, bow_chars="content"), model, masks_of(model, content=[9, 11]))
    torch.manual_seed(0)
    for head in objective.bow:
        torch.nn.init.normal_(head.weight, std=0.5)
    z = torch.randn(2, 16)
    labels = torch.tensor([[7, 9, 9, 3, -100], [11, 3, -100, -100, -100]])
    content = ((0, 9), (0, 9), (1, 11))  # the two 9s and the 11; 7 and 3 are not content
    per_layer = [bow_nll(head, z[:, 8 * j : 8 * (j + 1)], content) for j, head in enumerate(objective.bow)]
    torch.testing.assert_close(objective.bow_loss(z, labels), sum(per_layer) / 2)
    with pytest.raises(ValueError, match="needs the token masks"):
        VAEObjective(TrainConfig(bow_weight=1.0, bow_chars="content"), model)
    with pytest.raises(ValueError, match="--bow-chars content chooses the bag-of-words targets; it needs --bow-weight"):
        TrainConfig(bow_chars="content")
    with pytest.raises(ValueError, match="--bow-chars must be one of all, content, pattern .* got 'nouns'"):
        TrainConfig(bow_weight=1.0, bow_chars="content,nouns")


def test_bow_chars_per_layer_give_each_layer_its_own_class():
    """--bow-layers -1,0 --bow-chars pattern,content: the top layer's head counts the pattern tokens,
    the lowest layer's the content ones, whatever order the layers are named in."""
    model = tiny()  # 2 latent layers of 8 dims
    cfg = TrainConfig(bow_weight=1.0, bow_layers="-1,0", bow_chars="pattern,content")
    objective = VAEObjective(cfg, model, masks_of(model, content=[9, 11], pattern=[3, 7]))
    assert objective.bow_layers == [0, 1]
    torch.manual_seed(0)
    for head in objective.bow:
        torch.nn.init.normal_(head.weight, std=0.5)
    z = torch.randn(2, 16)
    labels = torch.tensor([[7, 9, 9, 3, -100], [11, 3, -100, -100, -100]])
    lowest = bow_nll(objective.bow[0], z[:, :8], ((0, 9), (0, 9), (1, 11)))
    top = bow_nll(objective.bow[1], z[:, 8:], ((0, 7), (0, 3), (1, 3)))
    torch.testing.assert_close(objective.bow_loss(z, labels), (lowest + top) / 2)
    mixed = VAEObjective(
        TrainConfig(bow_weight=1.0, bow_layers="1,0", bow_chars="all,content"), model, masks_of(model, content=[9])
    )
    assert (
        mixed.bow_targets[1].all() and mixed.bow_targets[0].tolist() == masks_of(model, content=[9])["content"].tolist()
    )


@pytest.mark.parametrize(
    "layers, chars, message",
    [
        ("", "content,pattern", "one class per --bow-layers entry; name the layers"),
        ("0,1", "content,pattern,all", "has 3 classes for the 2 layers of --bow-layers 0,1"),
        ("0,-2", "content,pattern", "layer 0 is named twice, with --bow-chars content and pattern"),
    ],
)
def test_bow_chars_per_layer_bad_values_are_named(layers, chars, message):
    model = tiny()
    with pytest.raises(ValueError, match=message):
        VAEObjective(TrainConfig(bow_weight=1.0, bow_layers=layers, bow_chars=chars), model, masks_of(model))


@pytest.mark.parametrize(
    "spec, message",
    [("2", "layer 2 does not exist; the model has 2 latent layers"), ("top", "'top' is not a latent-layer index")],
)
def test_bow_layers_bad_values_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        VAEObjective(TrainConfig(bow_weight=1.0, bow_layers=spec), tiny())
    with pytest.raises(ValueError, match="needs --bow-weight"):
        TrainConfig(bow_layers="0")


def test_word_dropout_masks_only_real_target_tokens_after_cls():
    model = tiny().train()
    ids, tt = random_joined(model, B=32, seed=4)
    m = model.config.maxlen
    seen = []
    hook = model.transformer.embed.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    torch.manual_seed(0)
    plain = model(ids, tt)
    torch.manual_seed(0)
    same = model(ids, tt, word_dropout=0.0)
    out = model(ids, tt, word_dropout=0.5)
    model.eval()
    model(ids, tt, word_dropout=0.5)
    hook.remove()
    assert torch.equal(plain.logits, same.logits)  # rate 0 draws nothing
    assert torch.equal(seen[3], ids)  # eval mode: no dropout
    fed, mask_id = seen[2], model.tokenizer.token_to_id("[MASK]")
    changed = fed != ids
    assert torch.equal(fed[:, :m], ids[:, :m]) and torch.equal(fed[:, m], ids[:, m])  # source, target [CLS]
    assert not changed[ids == 0].any()  # padding
    assert torch.all(fed[changed] == mask_id)
    real = (ids[:, m + 1 :] != 0).sum()
    assert 0.4 < changed.sum() / real < 0.6
    assert torch.equal(out.labels, plain.labels) and torch.equal(out.labels[:, :3], ids[:, m + 1 : m + 4])
    with pytest.raises(ValueError, match="no \\[MASK\\]"):
        tiny(with_mask=False).train()(ids, tt, word_dropout=0.1)


# ----------------------------------------------------------------------------- diagnostics


def test_mutual_information_closed_forms():
    torch.manual_seed(0)
    gauss = Gaussian(2)
    # q(z|x) = prior for every x: nothing about x reaches z
    same = torch.zeros(300, 4)
    mi, per_layer = mutual_information(gauss, [same, same])
    assert abs(mi) < 1e-5 and max(abs(v) for v in per_layer) < 1e-5
    # far-apart, nearly deterministic posteriors: z identifies x, I = log N
    far = torch.cat([10 * torch.arange(300.0)[:, None].expand(300, 2), torch.full((300, 2), -10.0)], -1)
    mi, per_layer = mutual_information(gauss, [far, same])
    assert mi == pytest.approx(math.log(300), abs=1e-4) and per_layer[0] == pytest.approx(math.log(300), abs=1e-4)
    # x ~ N(0, 1 - s^2), q(z|x) = N(x, s^2): the aggregate is N(0, 1) and I = -log(s^2)/2 per dim
    s2 = 0.25
    torch.manual_seed(1)  # not mutual_information's own seed 0: its noise must not copy these draws
    mu = torch.randn(2000, 2) * math.sqrt(1 - s2)
    params = torch.cat([mu, torch.full((2000, 2), math.log(s2))], -1)
    mi, _ = mutual_information(gauss, [params])
    assert mi == pytest.approx(-math.log(s2), abs=0.06)
    # vMF: one shared direction gives 0; antipodal, concentrated directions give log 2
    vmf = VMF(8, 200.0)
    e = torch.eye(8)[:1]
    assert abs(mutual_information(vmf, [e.expand(100, 8)])[0]) < 1e-4
    assert mutual_information(vmf, [torch.cat([e, -e]).repeat(50, 1)])[0] == pytest.approx(math.log(2), abs=1e-4)


def test_active_units():
    torch.manual_seed(0)
    gauss = Gaussian(4)
    constant = torch.cat([torch.ones(50, 4), torch.zeros(50, 4)], -1)
    count, variances = active_units(expected_codes(gauss, [constant]), 0.01)
    assert count == 0 and torch.all(variances == 0)
    # a deterministic encoder that spreads sentences along dims 0, 1, 3 and not 2
    mu = torch.randn(50, 4) * torch.tensor([1.0, 0.5, 0.0, 2.0])
    separable = torch.cat([mu, torch.full((50, 4), -20.0)], -1)
    count, variances = active_units(expected_codes(gauss, [separable, separable]), 0.01)
    assert count == 6
    torch.testing.assert_close(variances, torch.cat([mu, mu], -1).var(0))
    # vMF: E_q[z] = A_d(kappa) mu, shrunk towards 0 by the mean cosine
    vmf = VMF(8, 16.0)
    directions = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    torch.testing.assert_close(expected_codes(vmf, [directions]), vmf_mean_cosine(16.0, 8) * directions)
    samples = vmf.sample(directions.expand(20_000, 5, 8)).mean(0)
    torch.testing.assert_close(samples, vmf.expected_z(directions), atol=0.01, rtol=0)


def test_collapse_warning():
    config = preset("debug", latent="gaussian")  # 2 latent layers of 8 dims
    healthy = {"kl_per_layer": [3.0, 2.5], "au": 12, "au_per_layer": [6, 6]}
    assert collapse_warning(healthy, config) is None
    line = collapse_warning({"kl_per_layer": [0.02, 2.5], "au": 6, "au_per_layer": [0, 6]}, config)
    assert "\n" not in line and "layer(s) [0]" in line and "--kl-anneal cyclical" in line and "--free-bits" in line
    line = collapse_warning({"kl_per_layer": [3.0, 2.5], "au": 7, "au_per_layer": [7, 0]}, config)  # AU alone
    assert "active units 7 of 16" in line and "layer(s) [1]" in line
    # fixed-kappa vMF: a constant KL, nothing to collapse in the KL sense, and AU at delta 0.01 is no
    # measure of it (collapse_warning's docstring): silent, even at AU 0 (the default run printed
    # "active units 50 of 192" here)
    vmf = preset("debug")
    for metrics in (
        {"kl_per_layer": [7.0, 7.0], "au": 12, "au_per_layer": [6, 6]},
        {"kl_per_layer": [7.0, 7.0], "au": 0, "au_per_layer": [0, 0]},
        {"kl_per_layer": [0.0, 0.0], "au": 1, "au_per_layer": [1, 0]},
    ):
        assert collapse_warning(metrics, vmf) is None
    small = preset("small")
    assert collapse_warning({"kl_per_layer": [7.0] * 3, "au": 50, "au_per_layer": [30, 20, 0]}, small) is None
    # ... but a vMF layer whose MI alone is under 10% of log N carries almost nothing (the default run's
    # lowest latent layer: 0.32 nats of 7.10 while the other two were at the bound)
    log_n = math.log(1217)
    line = collapse_warning({"mi_per_layer": [0.32, 7.09, 7.10], "mi_max": log_n}, small)
    assert "\n" not in line and f"of at most log N = {log_n:.2f}, layer(s) [0] below 10%" in line
    assert "KL pressure" not in line and VMF.collapse_remedies in line
    assert collapse_warning({"mi_per_layer": [0.72, 7.09, 7.10], "mi_max": log_n}, small) is None  # 0.71 is the line
    assert collapse_warning({"mi_per_layer": [0.12, 1.3], "mi_max": math.log(4)}, vmf) == (
        "warning: posterior collapse? MI per layer [0.12, 1.30] nats of at most log N = 1.39, layer(s) [0] below 10% "
        f"of it: that code barely tells the sentences apart -- the decoder reads the sentence from the other codes, "
        f"or from none; try {VMF.collapse_remedies}"
    )
    # a Gaussian layer too: a KL well above COLLAPSE_KL spent on noise
    line = collapse_warning({"kl_per_layer": [3.0, 2.5], "mi_per_layer": [3.0, 0.05], "mi_max": 4.0}, config)
    assert "layer(s) [1] below 10%" in line and "KL pressure" in line


def test_latent_metrics_bound_the_mi_by_log_n():
    vmf = VMF(8, 64.0)
    directions = torch.nn.functional.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    metrics = latent_metrics(vmf, [directions, directions[:1].expand(50, 8)])
    assert metrics["mi_max"] == pytest.approx(math.log(50))
    spread, same = metrics["mi_per_layer"]
    assert same == pytest.approx(0.0, abs=1e-6) and spread > 0.5 * metrics["mi_max"]  # one code for all: 0 exactly


def test_train_config_checks_the_objective_flags():
    assert TrainConfig(kl_anneal="cyclical", max_steps=300).kl_anneal_steps == 300
    for bad, match in (
        (dict(kl_anneal="cyclical"), "kl-anneal-steps"),
        (dict(kl_anneal="cosine"), "kl-anneal"),
        (dict(kl_reduction="sum"), "kl-reduction"),
        (dict(word_dropout=1.0), "word-dropout"),
        (dict(kl_ratio_zero=0.8, kl_ratio_increase=0.3), "ratio"),
        (dict(free_bits=-1.0), "free-bits"),
        (dict(au_delta=0.0), "au-delta"),
    ):
        with pytest.raises(ValueError, match=match):
            TrainConfig(**bad)


def test_code_dropout_feeds_the_decoder_a_prior_draw_for_one_layer():
    """code_dropout: the decoder of a dropped sentence reads a training-prior draw for one layer's
    code and the encoder's own code for the others; reproduced by forcing that mixed z in eval mode."""
    model = UniVAE(preset("debug", vocab_size=64, latent="vmf"), None).train()
    ids, tt = random_joined(model, B=6, seed=3)
    torch.manual_seed(7)
    out = model(ids, tt, sample=False, code_dropout=0.99)
    torch.manual_seed(7)  # replay the draws forward() makes, in its order
    B, n = 6, model.config.num_latent_layers
    pick = torch.randint(n, (B,))
    dropped = torch.where(torch.rand(B) < 0.99, pick, -1)
    draws = [model.family.prior(B, layer=j) for j in range(n)]
    assert (dropped >= 0).all() and len(set(dropped.tolist())) == n  # every layer dropped somewhere
    z = out.mu.clone()
    k = model.config.z_dim
    for b, j in enumerate(dropped.tolist()):
        z[b, j * k : (j + 1) * k] = draws[j][b]
    model.eval()
    with torch.no_grad():
        forced = model(ids, tt, z=z)
    torch.testing.assert_close(out.logits, forced.logits, atol=1e-5, rtol=0)
    k0 = model(ids, tt).z[:, :k]  # the lowest layer's code: below every drop, and returned as encoded
    torch.testing.assert_close(out.z[:, :k], k0)
    torch.testing.assert_close(out.mu[:, :k], k0)
    assert not torch.equal(out.z[:, :k], torch.stack([draws[0][b] for b in range(B)]))
    with torch.no_grad():
        plain = model.train()(ids, tt, sample=False)
    assert (plain.logits - out.logits).abs().max() > 1e-3  # and dropping it mattered


def test_family_abilities_answer_what_callers_used_to_ask_by_name():
    """The class attributes that replace `latent == "vq"` checks, per family, and describe()'s words."""
    abilities = ("has_codes", "has_components", "fits_prior", "edits_whole_layers", "kl_is_constant")
    got = {name: tuple(getattr(family_class(name), a) for a in abilities) for name in FAMILIES}
    assert got == {
        "vmf": (False, False, True, False, True),
        "gaussian": (False, False, True, False, False),
        "vq": (True, False, False, True, True),
        "gmm": (False, True, True, False, False),
    }
    config = preset("debug", latent="vmf", kappa=[32, 16])
    assert family_class("vmf").describe(config) == "kappa 32,16"
    assert family_class("vq").describe(preset("debug", latent="vq", codebook_size=8)) == "8 codes per layer (l2)"
    assert family_class("gmm").describe(preset("debug", latent="gmm", mixture_components=3)) == (
        "3 components per layer"
    )
    with pytest.raises(ValueError, match="'flow' is not implemented"):
        family_class("flow")


@pytest.mark.parametrize("name", ["vmf", "gaussian", "gmm"])
def test_log_prior_is_a_normalised_density(name):
    """Each family's log_prior against a reference: the sphere's uniform density, N(0, I), the mixture's
    logsumexp written out with torch.distributions."""
    config = preset("debug", latent=name, num_latent_layers=2)
    family = make_family(config)
    z = family.prior(6, layer=1)
    got = family.log_prior(z, layer=1)
    if name == "vmf":
        expected = torch.full((6,), -log_sphere_area(config.z_dim))
    elif name == "gaussian":
        expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    else:
        comp = torch.distributions.Independent(
            torch.distributions.Normal(family.prior_mean[1], family.prior_logvar[1].mul(0.5).exp()), 1
        )
        mix = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=torch.zeros(config.mixture_components)), comp
        )
        expected = mix.log_prob(z)
    torch.testing.assert_close(got, expected.detach())
