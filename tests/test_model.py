"""UniVAE: information flow, bottleneck, latent ordering, vMF, backends, checkpoints."""

import math

import pytest
import torch
from conftest import random_joined

import univae
from univae.latents import VMF
from univae.vmf import log_bessel_iv, vmf_kl_uniform, vmf_mean_cosine


@pytest.fixture(params=["bert", "roformer"])
def model(request, hf_dirs):
    torch.manual_seed(0)
    return univae.UniVAE.from_pretrained(str(hf_dirs[request.param]), maxlen=12, z_dim=8).eval()


# ----------------------------------------------------------------------------- vMF


def test_bessel_series_matches_torch_i0_i1():
    for x in (0.5, 3.0, 32.0, 80.0):
        assert math.isclose(
            log_bessel_iv(0, x), math.log(torch.special.i0(torch.tensor(x, dtype=torch.float64))), rel_tol=1e-12
        )
        assert math.isclose(
            log_bessel_iv(1, x), math.log(torch.special.i1(torch.tensor(x, dtype=torch.float64))), rel_tol=1e-12
        )


def test_vmf_mean_cosine_matches_analytic():
    torch.manual_seed(0)
    assert abs(vmf_mean_cosine(32, 16) - 0.790) < 5e-4
    family = VMF(16, 32.0)
    mu = torch.nn.functional.normalize(torch.randn(100_000, 16), dim=-1)
    z = family.sample(mu)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(100_000))
    assert abs((z * mu).sum(-1).mean().item() - 0.790) < 0.005


def test_vmf_kl_is_the_analytic_constant():
    """KL = E_q[log q(z)] - log p(z) = log C_d(k) + k E[w] + log|S^{d-1}|; check against a sampled E[w]."""
    torch.manual_seed(0)
    family = VMF(16, 32.0)
    w = family.sample_cosine((200_000,), "cpu").double().mean().item()
    log_area = math.log(2 * math.pi**8 / math.gamma(8))
    assert abs(family.log_norms[0] + 32 * w + log_area - vmf_kl_uniform(32, 16)) < 0.02
    assert abs(vmf_kl_uniform(32, 16) - 7.58) < 0.01


def test_vmf_per_layer_kappa_samples_each_layer_at_its_own_concentration():
    """kappa (16, 128): each layer's sampled mean cosine, KL and log q are those of a one-kappa VMF."""
    torch.manual_seed(0)
    family = VMF(16, (16.0, 128.0))
    mu = torch.nn.functional.normalize(torch.randn(100_000, 16), dim=-1)
    for j, k in enumerate((16.0, 128.0)):
        z = family.sample(mu, layer=j)
        assert abs((z * mu).sum(-1).mean().item() - vmf_mean_cosine(k, 16)) < 0.005
        assert family.kl(mu[:3], layer=j).tolist() == pytest.approx([vmf_kl_uniform(k, 16)] * 3)
        torch.testing.assert_close(family.log_q(z[:5], mu[:5], layer=j), VMF(16, k).log_q(z[:5], mu[:5]))
        torch.testing.assert_close(family.expected_z(mu[:5], layer=j), vmf_mean_cosine(k, 16) * mu[:5])
    with pytest.raises(ValueError, match="different kappas"):
        family.sample(mu)


def test_per_layer_kappa_config_and_model(hf_dirs):
    with pytest.raises(ValueError, match="3 values for 2 latent layers"):
        univae.UniVAEConfig(num_hidden_layers=3, num_latent_layers=2, kappa=[8.0, 16.0, 32.0])
    assert univae.UniVAEConfig(num_hidden_layers=3, num_latent_layers=2, kappa=[8, 8]).kappa == 8.0  # one value
    model = univae.UniVAE.from_pretrained(
        str(hf_dirs["bert"]), maxlen=12, z_dim=8, num_latent_layers=2, kappa=[8.0, 64.0]
    )
    assert model.family.kappas == (8.0, 64.0) and model.config.kappas == [8.0, 64.0]
    out = model(random_joined(model, seed=0)[0])
    assert out.kl.item() == pytest.approx(vmf_kl_uniform(8.0, 8) + vmf_kl_uniform(64.0, 8), rel=1e-5)


def test_vmf_sample_is_reparameterised():
    family = VMF(8, 16.0)
    params = torch.randn(4, 8, requires_grad=True)
    family.sample(params).sum().backward()
    assert params.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- information flow


def test_target_is_causal(model):
    ids, tt = random_joined(model, seed=1)
    m, t = model.config.maxlen, 5
    changed = ids.clone()
    changed[:, m + t + 1 :] = torch.randint(5, model.config.vocab_size, changed[:, m + t + 1 :].shape)
    with torch.no_grad():
        a, b = model(ids, tt).logits, model(changed, tt).logits
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the test can fail


def test_target_sees_source_only_through_z(model):
    ids, tt = random_joined(model, seed=2)
    m = model.config.maxlen
    z = model.sample_prior(ids.shape[0])
    changed = ids.clone()
    changed[:, 1 : m - 1] = torch.randint(5, model.config.vocab_size, (ids.shape[0], m - 2))
    changed[:, m - 1] = 3  # a full-length source: padding changes too
    with torch.no_grad():
        a, b = model(ids, tt, z=z).logits, model(changed, tt, z=z).logits
        c, d = model(ids, tt).logits, model(changed, tt).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert not torch.allclose(c, d)  # without a fixed z the source does matter


def test_decode_logits_equals_joined_forward_with_forced_z(model):
    ids, tt = random_joined(model, seed=3)
    m = model.config.maxlen
    z = model.sample_prior(ids.shape[0])
    with torch.no_grad():
        full = model(ids, tt, z=z).logits
        for T in (m, 5, 1):
            torch.testing.assert_close(model.decode_logits(z, ids[:, m : m + T]), full[:, :T], atol=1e-5, rtol=1e-5)


def test_latent_dims_are_ordered_lowest_layer_first(model):
    ids, _ = random_joined(model, seed=4)
    src = ids[:, : model.config.maxlen]
    seen = {}
    hooks = [
        mod.register_forward_hook(lambda mod, i, o, j=j: seen.__setitem__(j, o)) for j, mod in enumerate(model.down)
    ]
    with torch.no_grad():
        z = model.encode_ids(src)
    for h in hooks:
        h.remove()
    k = model.config.z_dim
    for j in range(model.config.num_latent_layers):
        torch.testing.assert_close(z[:, j * k : (j + 1) * k], torch.nn.functional.normalize(seen[j], dim=-1))
    # and each slice drives its own layer: changing the first slice changes nothing below that layer's input
    assert model.config.latent_layers == list(
        range(model.config.num_hidden_layers - model.config.num_latent_layers, model.config.num_hidden_layers)
    )


def test_encode_equals_joined_forward_posterior_mean(model):
    ids, tt = random_joined(model, seed=5)
    with torch.no_grad():
        out = model(ids, tt)  # eval mode: the bottleneck uses the posterior mean
        z = model.encode_ids(ids[:, : model.config.maxlen])
    torch.testing.assert_close(z, out.mu, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.z, out.mu)


def test_posterior_chunks_cover_every_row_in_order(model):
    ids, _ = random_joined(model, seed=6)
    src = ids[:, : model.config.maxlen]
    with torch.no_grad():
        whole = model.posterior_params(src)
        chunks = list(model.posterior_chunks(src, batch_size=3))
        in_chunks = model.posterior_params_all(src, batch_size=3)
    assert [len(chunk) for chunk, _ in chunks] == [3] * (len(src) // 3) + ([len(src) % 3] if len(src) % 3 else [])
    torch.testing.assert_close(torch.cat([chunk for chunk, _ in chunks]), src)
    for a, b in zip(in_chunks, whole, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_loss_counts_real_target_tokens_and_sep(model):
    ids, tt = random_joined(model, seed=6, lengths=[3, 7, 10, 1])
    with torch.no_grad():
        out = model(ids, tt)
    m = model.config.maxlen
    assert out.n_tokens.item() == sum(n + 1 for n in [3, 7, 10, 1])  # tokens + [SEP]
    logp = out.logits[:, :-1].log_softmax(-1)
    tgt = ids[:, m + 1 :]
    real = tgt != 0
    ref = -logp.gather(-1, tgt[..., None])[..., 0][real].mean()
    torch.testing.assert_close(out.ce, ref)
    assert out.kl.item() == pytest.approx(
        model.config.num_latent_layers * vmf_kl_uniform(model.config.kappa, 8), rel=1e-5
    )


# ----------------------------------------------------------------------------- backends


def test_backends_agree_on_forward_and_gradients(model):
    ids, tt = random_joined(model, seed=7)
    z = model.sample_prior(ids.shape[0])
    results = {}
    for attn in ("eager", "sdpa", "split"):
        model.config.attn = attn
        model.zero_grad()
        out = model(ids, tt, z=z)
        out.loss.backward()
        results[attn] = (
            out.logits.detach(),
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
    for attn in ("sdpa", "split"):
        torch.testing.assert_close(results[attn][0], results["eager"][0], atol=1e-5, rtol=1e-5)
        for n, g in results["eager"][1].items():
            torch.testing.assert_close(results[attn][1][n], g, atol=1e-5, rtol=1e-4, msg=f"{attn} {n}")
    model.config.attn = "flex"
    with torch.no_grad():
        torch.testing.assert_close(model(ids, tt, z=z).logits, results["eager"][0], atol=1e-5, rtol=1e-5)
    model.config.attn = "auto"


@pytest.mark.parametrize("latent", ["vmf", "gaussian", "gmm", "vq"])
@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
def test_pruned_split_forward_matches_eager_through_the_encoder(hf_dirs, latent, kernel, monkeypatch):
    """The training forward under split skips the source rows nobody reads (UniVAE.layer_masks):
    the same loss, logits, code and gradient of every weight (encoder, bottleneck, decoder) as the
    joined dense-mask forward, for both kernels split runs on (BERT, and RoFormer whose rotary
    tables follow the kept rows)."""
    import univae.attention as attention

    monkeypatch.setattr(attention, "_kernel", lambda q: kernel)
    for kind in ("bert", "roformer"):
        torch.manual_seed(0)
        m = univae.UniVAE.from_pretrained(str(hf_dirs[kind]), maxlen=12, z_dim=8, latent=latent).eval()
        ids, tt = random_joined(m, seed=11)
        results = {}
        for attn in ("eager", "split"):
            m.config.attn = attn
            m.zero_grad()
            out = m(ids, tt)
            out.loss.backward()
            grads = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
            results[attn] = (out.loss.detach(), out.logits.detach(), out.mu.detach(), grads)
        (loss, logits, mu, grads), (loss_s, logits_s, mu_s, grads_s) = results["eager"], results["split"]
        torch.testing.assert_close(loss_s, loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits_s, logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mu_s, mu, atol=1e-5, rtol=1e-5)
        assert grads_s.keys() == grads.keys() and any(n.startswith("down.") for n in grads)
        for n, g in grads.items():
            torch.testing.assert_close(grads_s[n], g, atol=1e-5, rtol=1e-4, msg=f"{kind} {latent} {n}")


def test_pruned_split_forward_computes_only_the_rows_read(model):
    """Rows through each layer's feed-forward: both halves below, the source [CLS] and the target
    in the layer under the top one, the target alone in the top layer."""
    ids, tt = random_joined(model, seed=12)
    B, m, L = ids.shape[0], model.config.maxlen, model.config.num_hidden_layers
    rows = {}
    hooks = [
        layer.ffn_in.register_forward_hook(lambda mod, inp, out, l=l: rows.__setitem__(l, inp[0].shape[:2]))
        for l, layer in enumerate(model.transformer.layers)
    ]
    model.config.attn = "split"
    with torch.no_grad():
        model(ids, tt)
    for h in hooks:
        h.remove()
    model.config.attn = "auto"
    assert rows == {**{l: (B, 2 * m) for l in range(L - 2)}, L - 2: (B, 1 + m), L - 1: (B, m)}


def test_decode_logits_agree_across_backends(model):
    ids, _ = random_joined(model, seed=8)
    tgt = ids[:, model.config.maxlen :]
    z = model.sample_prior(ids.shape[0])
    out = {}
    with torch.no_grad():
        for attn in ("eager", "sdpa", "flex", "split"):
            model.config.attn = attn
            out[attn] = model.decode_logits(z, tgt)
            out[attn + "_encode"] = model.encode_ids(ids[:, : model.config.maxlen])
    model.config.attn = "auto"
    for attn in ("sdpa", "flex", "split"):
        torch.testing.assert_close(out[attn], out["eager"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[attn + "_encode"], out["eager_encode"], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_is_exact(model, tmp_path):
    model.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = univae.UniVAE.from_pretrained(str(tmp_path)).eval()
    assert loaded.config == model.config
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    ids, tt = random_joined(model, seed=9)
    with torch.no_grad():
        assert torch.equal(model(ids, tt).logits, loaded(ids, tt).logits)
    assert loaded.tokenizer.get_vocab() == model.tokenizer.get_vocab()


def test_hf_init_loads_backbone_and_checks_overrides(hf_bert, tmp_path):
    directory, hf = hf_bert
    m = univae.UniVAE.from_pretrained(str(directory), maxlen=12)
    torch.testing.assert_close(m.transformer.embed.word.weight, hf.bert.embeddings.word_embeddings.weight)
    assert m.config.num_latent_layers == 2  # min(4, layers - 1)
    m.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="fixes hidden_size"):
        univae.UniVAE.from_pretrained(str(tmp_path), hidden_size=64)
    with pytest.raises(ValueError, match="2\\*maxlen"):
        univae.UniVAE.from_pretrained(str(directory), maxlen=40)
    with pytest.raises(ValueError, match="num_latent_layers"):
        univae.UniVAE.from_pretrained(str(directory), num_latent_layers=3)


def test_tokenizer_is_a_tokenizers_tokenizer(model):
    from tokenizers import Tokenizer

    tok = model.tokenizer
    assert isinstance(tok, Tokenizer)
    assert tok.encode("我是中国人", add_special_tokens=False).tokens == list("我是中国人")
    assert tok.token_to_id("[CLS]") == 2 and tok.get_vocab_size() == model.config.vocab_size


def test_trimmed_halves_equal_full_forward(model):
    """A batch of short sentences trimmed to its longest one gives the same logits and loss."""
    from univae.data import join

    ids, tt = random_joined(model, seed=10, lengths=[2, 5, 4, 1])
    short = 5 + 2
    trimmed_ids, trimmed_tt = join(ids[:, :short])
    z = model.sample_prior(4)
    with torch.no_grad():
        full, trimmed = model(ids, tt, z=z), model(trimmed_ids, trimmed_tt, z=z)
        free_full, free_trimmed = model(ids, tt), model(trimmed_ids, trimmed_tt)
    torch.testing.assert_close(trimmed.logits, full.logits[:, :short], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(trimmed.ce, full.ce, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(free_trimmed.mu, free_full.mu, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="length"):
        model(torch.cat([ids, ids[:, :2]], 1))
