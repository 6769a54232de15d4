"""Sentence-level operations on codes, built on univae.decoding: reconstruct, sample, edit (redraw
latent dims), interpolate, analogy, augment, attribute transfer, and the latent arithmetic under them.

Every operation maps sentences to codes (the posterior mean), works on the codes in the family's
own space (vMF: on the sphere, Gaussian and mixture: linear, VQ: snapped to the nearest code),
and decodes the result with univae.decoding. UniVAE's methods are thin wrappers of these.
"""

import torch
import torch.nn.functional as F

from univae.decoding import Decoding, decode_texts, inference
from univae.edit_dims import edit_size, parse_dims
from univae.metrics import char_f1
from univae.tokenizer import SEP, detokenize, encode_texts

# ----------------------------------------------------------------------------- latent-space operations


def _space(model):
    """Where the family's codes live (latents.py): "sphere" (vMF), "euclidean" (Gaussian, mixture)
    or "codebook" (VQ); the latent arithmetic below branches on it."""
    return model.family.space


def _per_layer(model, z, fn):
    """Apply fn(z_l, j) to each latent layer's slice of z (..., latent_dim) and concatenate back."""
    return torch.cat([fn(zl, j) for j, zl in enumerate(model.split_z(z))], dim=-1)


def _snap(model, z):
    """VQ: each layer's slice of z replaced by its nearest code vector."""
    return _per_layer(model, z, lambda zl, j: model.family.snap(zl, j).to(z.dtype))


def slerp(a, b, t):
    """Spherical interpolation between unit vectors a, b (..., k) at weights t (T, 1) -> (T, ..., k).

    Nearly parallel vectors fall back to normalised linear interpolation (sin(omega) ~ 0)."""
    cos = (a * b).sum(-1, keepdim=True).clamp(-1, 1)
    omega = torch.acos(cos)
    so = torch.sin(omega)
    t = t.view(-1, *([1] * a.dim()))
    safe = so.abs() > 1e-6
    wa = torch.where(safe, torch.sin((1 - t) * omega) / torch.where(safe, so, 1), 1 - t)
    wb = torch.where(safe, torch.sin(t * omega) / torch.where(safe, so, 1), t)
    out = wa * a + wb * b
    return torch.where(safe, out, F.normalize(out, dim=-1))


def interpolate_z(model, za, zb, steps):
    """`steps` codes from za to zb (D,), endpoints included: slerp per vMF layer, linear otherwise.

    VQ decodes only codebook vectors, so each point of the linear path is snapped to the nearest code
    per layer: the path visits the codes between the ends (repeating one while it stays nearest)."""
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    t = torch.linspace(0, 1, steps, device=za.device)[:, None]
    if _space(model) == "codebook":
        return _snap(model, torch.lerp(za[None], zb[None], t))
    if _space(model) != "sphere":
        return torch.lerp(za[None], zb[None], t)
    return torch.cat([slerp(a, b, t) for a, b in zip(model.split_z(za), model.split_z(zb))], dim=-1)


def analogy_z(model, za, zb, zc):
    """z_c + z_b - z_a ("a is to b as c is to ?"), put back on each vMF layer's sphere.

    A vMF layer where the sum nearly cancels has no direction; it keeps z_c's. VQ: snapped to the
    nearest code per layer."""
    return _into_code_space(model, zc + zb - za, zc)


def _into_code_space(model, d, fallback):
    """Sums of codes d (N, D) back where codes live: VQ snapped to the nearest code per layer,
    Gaussian / gmm as they are, each vMF layer put back on its unit sphere (a layer whose sum nearly
    cancels has no direction and keeps fallback's)."""
    if _space(model) == "codebook":
        return _snap(model, d)
    if _space(model) != "sphere":
        return d
    return torch.cat(
        [
            torch.where(dl.norm(dim=-1, keepdim=True) > 1e-6, F.normalize(dl, dim=-1), fl)
            for dl, fl in zip(model.split_z(d), model.split_z(fallback))
        ],
        dim=-1,
    )


def fill_spheres(z, replaced, z_dim):
    """Put the vMF layers of codes z (n, D) that are only partly in `replaced` (LongTensor of dims
    just overwritten by a prior draw) back on their unit spheres, in place: the other dims of such a
    layer keep their exact values, and the replaced part keeps its direction and is rescaled to fill
    the remaining norm, |kept|^2 + |replaced|^2 = 1. Layers replaced whole, or not at all, are left
    as they are (a draw of a whole layer is put on its sphere by whoever drew it)."""
    D = z.shape[1]
    for j in range(D // z_dim):
        part = replaced[(replaced >= j * z_dim) & (replaced < (j + 1) * z_dim)]
        if 0 < part.numel() < z_dim:
            keep = torch.ones(D, dtype=torch.bool, device=z.device)
            keep[part] = False
            keep[: j * z_dim] = keep[(j + 1) * z_dim :] = False
            room = (1 - z[:, keep].pow(2).sum(-1, keepdim=True)).clamp_min(0).sqrt()
            z[:, part] = F.normalize(z[:, part], dim=-1) * room
    return z


def edit_z(model, z, dims, n, component=None, prior="auto"):
    """n copies of z (D,) with `dims` redrawn; untouched dims keep their exact values.

    With a fitted prior (model.uses_fitted_prior: prior "auto" or "fitted", no gmm `component`), the
    redrawn dims come from its conditional given the kept dims (univae.density); otherwise they are
    the same dims of fresh training-prior draws (gmm: from mixture `component` if given). A vMF
    layer that is only partly replaced has its replaced part rescaled so the layer stays on its
    sphere (fill_spheres; the fitted prior does the same); a wholly replaced one is a draw on the
    sphere. For VQ `dims` are code positions (edit_size): each one's code becomes a uniformly drawn
    code (VQ has no fitted prior)."""
    index, _ = parse_dims(dims, edit_size(model))
    if _space(model) == "codebook":  # code positions -> the z dims of those layers
        k = model.config.z_dim
        index = (index[:, None] * k + torch.arange(k)).flatten()
    index = index.to(z.device)
    if model.uses_fitted_prior(prior, component):
        keep = torch.ones(z.numel(), dtype=torch.bool, device=z.device)
        keep[index] = False
        return model.fitted_prior.conditional_sample(z, keep, n)
    out = z.reshape(1, -1).expand(n, -1).clone()
    out[:, index] = model.sample_prior(n, z.device, component=component, prior=prior)[:, index].to(out.dtype)
    if _space(model) == "sphere":
        fill_spheres(out, index, model.config.z_dim)
    return out


def layer_spreads(model, spread):
    """spread as one float per latent layer: a number is every layer's, a sequence is one per layer
    (lowest first); each non-negative. Raises ValueError naming the value otherwise."""
    k = model.config.num_latent_layers
    spreads = [float(spread)] * k if isinstance(spread, (int, float)) else [float(x) for x in spread]
    if len(spreads) != k:
        raise ValueError(
            f"spread has {len(spreads)} values, but the model has {k} latent layers: "
            "give one number for all, or one per layer, lowest first"
        )
    if any(not x >= 0 for x in spreads):  # `not >=` also catches nan
        raise ValueError(f"spread must be non-negative, got {spread}")
    return spreads


def perturb_z(model, z, n, spread, params=None):
    """n codes around each row of z (B, D) -> (B*n, D), rows grouped per input, drawn like posterior samples.

    `spread` is one number or one per latent layer (lowest first; layer_spreads), so that a variant
    can redraw the layers that carry how a sentence is said and keep the one that carries what it
    says. vMF: per layer, a sample s ~ vMF(z_l, kappa) of the model's own posterior, then
    slerp(z_l, s, spread): spread 1 is the posterior itself, 0 is z, 2 doubles each sample's angle.
    VQ, whose posterior is a point mass: per layer, a code drawn with probability
    ∝ exp(-d(z_l, e_k) / spread), d the family's squared distance (spread 0: z's own code).
    Otherwise (e.g. Gaussian, mixture), z_l + spread * (sample(params) - mean(params)) with the
    posterior params of z."""
    spreads = layer_spreads(model, spread)
    z = z.repeat_interleave(n, dim=0)
    if _space(model) == "sphere":

        def around(zl, j):
            if spreads[j] == 0:
                return zl
            return slerp(zl, model.family.sample(zl, layer=j), torch.tensor([spreads[j]], device=z.device))[0]

        return _per_layer(model, z, around)
    if _space(model) == "codebook":
        return _per_layer(model, z, lambda zl, j: _draw_codes(model.family, zl, j, spreads[j]).to(z.dtype))
    if params is None:
        raise ValueError("perturbing a non-vMF code needs its posterior params")
    params = [p.repeat_interleave(n, dim=0) for p in params]
    noise = torch.cat(
        [spreads[j] * (model.family.sample(p, layer=j) - model.family.mean(p, layer=j)) for j, p in enumerate(params)],
        dim=-1,
    )
    return z + noise


def attribute_direction(model, z_from, z_to, method="mean", shrinkage=0.1):
    """The direction (D,) that moves a code from the FROM sentences' codes z_from (n, D) towards the
    TO sentences' z_to (m, D); transfer_z adds strength x it.

    "mean" (default): the difference of the means, m_to - m_from (each layer's slice of it is that
    layer's mean difference). "probe": the unit normal w of a linear probe separating the two
    sets, Fisher's discriminant w ∝ S^-1 (m_to - m_from) with S the pooled within-set covariance
    shrunk towards its mean variance (S <- (1 - shrinkage) S + shrinkage tr(S)/D I, so a few hundred
    codes in 192 dims give a stable solve), scaled to the mean difference's component along it:
    w (w . (m_to - m_from)). Both move a FROM code by the gap between the two sets' means at
    strength 1; the probe spends none of the move on directions in which the sets do not differ.
    On the fine-tuned default (bench/transfer.py; docs/results.md, "Downstream on the default") the
    mean difference turns more sentences at the same content kept. FROM == TO gives zero."""
    z_from, z_to = z_from.double(), z_to.double()
    if z_from.shape[0] < 1 or z_to.shape[0] < 1:
        raise ValueError("attribute_direction needs at least one FROM code and one TO code")
    diff = z_to.mean(0) - z_from.mean(0)
    if method == "mean" or not bool(diff.any()):
        return diff.float()
    if method != "probe":
        raise ValueError(f"method must be probe or mean, got {method!r}")
    if not 0 < shrinkage <= 1:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    centred = torch.cat([z_from - z_from.mean(0), z_to - z_to.mean(0)])  # (n + m, D)
    S = centred.T @ centred / max(centred.shape[0] - 2, 1)
    scale = float(S.diagonal().mean())
    S = (1 - shrinkage) * S + shrinkage * (scale if scale > 0 else 1.0) * torch.eye(S.shape[0], dtype=S.dtype)
    w = torch.linalg.solve(S.to(diff.device), diff)
    w = w / w.norm()
    return (w * (w @ diff)).float()


def transfer_z(model, z, direction, strength):
    """Codes z (N, D) moved by strength x direction (D,): each vMF layer's sum put back on its unit
    sphere (a layer whose sum nearly cancels keeps its code), Gaussian / gmm codes used as they are,
    VQ snapped to the nearest code per layer. Strength 0 returns z itself, unrounded."""
    if strength == 0:
        return z.clone()
    return _into_code_space(model, z + strength * direction.to(z), z)


def _draw_codes(family, z, layer, spread):
    """VQ: per row of z (B, z_dim), a code vector drawn from softmax(-d(z, e_k) / spread)."""
    d = family.distances(family.project(z), layer)  # (B, K)
    if spread == 0:
        codes = d.argmin(-1)
    else:
        codes = torch.multinomial(torch.softmax(-d / spread, dim=-1), 1)[:, 0]
    return family.vectors(layer)[codes]


def _check_texts(texts):
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    for s in texts:
        if not isinstance(s, str):
            raise ValueError(f"expected a sentence (str), got {type(s).__name__}")
        if not s.strip():
            raise ValueError("empty text: every input needs at least one character")
    return texts


def posterior(model, texts):
    """Sentences -> (posterior mean codes (N, D), per-layer posterior params). Over-long ones are
    truncated with a warning (encode_texts)."""
    texts = _check_texts(texts)
    ids, _, _ = encode_texts(model.tokenizer, texts, model.config.maxlen)
    params = model.posterior_params_all(ids)
    return model.mean_code(params), params


# ----------------------------------------------------------------------------- the API (UniVAE's methods call these)


def generate(model, z, **decoding):
    """Codes (N, D) -> N sentences."""
    opts = Decoding(**decoding)
    with inference(model, opts.seed):
        return decode_texts(model, z, opts)


def reconstruct(model, texts, return_z=False, **decoding):
    """Sentences -> their decoded posterior means, aligned with the input."""
    opts = Decoding(**decoding)
    with inference(model, opts.seed):
        z, _ = posterior(model, texts)
        out = decode_texts(model, z, opts)
    return (out, z) if return_z else out


def sample(model, n, return_z=False, component=None, prior="auto", spread=None, **decoding):
    """n sentences decoded from prior draws (model.sample_prior: `prior` auto, fitted or uniform;
    `spread` of fitted draws; gmm: from mixture `component` if given)."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with inference(model, opts.seed):
        z = model.sample_prior(n, component=component, prior=prior, spread=spread)
        out = decode_texts(model, z, opts)
    return (out, z) if return_z else out


def edit(model, texts, dims, n, return_z=False, component=None, prior="auto", **decoding):
    """n variants of each sentence (one str, or a list) with the latent `dims` (see parse_dims; VQ:
    code positions) redrawn (edit_z: from the fitted prior's conditional given the kept dims, or the
    training prior with prior="uniform"; gmm: from mixture `component` if given). Returns
    len(texts) * n sentences, the n variants of each sentence together."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with inference(model, opts.seed):
        z, _ = posterior(model, texts)
        z = torch.cat([edit_z(model, zi, dims, n, component=component, prior=prior) for zi in z])
        out = decode_texts(model, z, opts)
    return (out, z) if return_z else out


def interpolate(model, a, b, steps, return_z=False, **decoding):
    """`steps` sentences on the path from a's code to b's, both ends included."""
    opts = Decoding(**decoding)
    with inference(model, opts.seed):
        z, _ = posterior(model, [a, b])
        z = interpolate_z(model, z[0], z[1], steps)
        out = decode_texts(model, z, opts)
    return (out, z) if return_z else out


def analogy(model, a, b, c, n=1, spread=1.0, return_z=False, **decoding):
    """ "a is to b as c is to ?": decode z_c + z_b - z_a; with n > 1, also n - 1 codes drawn
    around it as perturb_z does (noise scaled by spread; for non-vMF latents, c's posterior noise)."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    with inference(model, opts.seed):
        z, params = posterior(model, [a, b, c])
        d = analogy_z(model, z[0], z[1], z[2])[None]
        if n > 1:
            around = perturb_z(model, d, n - 1, spread, [p[2:3] for p in params])
            d = torch.cat([d, around])
        out = decode_texts(model, d, opts)
    return (out, d) if return_z else out


DEFAULT_KEEP_START = 0.8  # measured: docs/results.md, "What the latent space is for"


def augment(model, texts, n, spread=1.0, candidates=1, rank=None, keep_start=None, **decoding):
    """For each sentence, up to n distinct variants decoded from codes drawn around its posterior
    mean (perturb_z; `spread` one number or one per latent layer, e.g. [0, 1, 1] keeps the lowest
    layer, which the default recipe trains to hold the content). Each variant keeps the sentence's
    first k tokens, k drawn uniformly from 1 to keep_start x its length (default DEFAULT_KEEP_START;
    0 = every token decoded from the code; beam search cannot force a prefix, so there the default
    is 0): the decoder's drift, which grows along the sentence, then changes the end and leaves the
    start, and the variants keep the label more often (a sentiment judge's agreement with the
    source's label: docs/results.md, "What the latent space is for"). Outputs equal to the input (or
    to its tokenised round trip) or to an earlier variant, whitespace ignored, are dropped, and so
    are empty ones. With candidates=m > 1, m * n codes are drawn and decoded, and the n surviving
    variants that `rank` puts first are kept: "round_trip" = the cosine between the variant's own
    code (encoded again) and the sentence's, "overlap" = char F1 with the sentence (neither helped
    measurably on the default checkpoint, so candidates defaults to 1). Returns a list of lists
    aligned with `texts`."""
    opts = Decoding(**decoding)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    layer_spreads(model, spread)  # fail before any decoding
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    if keep_start is None:
        keep_start = 0.0 if opts.beam_size > 1 else DEFAULT_KEEP_START
    if not 0 <= keep_start <= 1:
        raise ValueError(f"keep_start must be in [0, 1], got {keep_start}")
    if rank not in (None, "round_trip", "overlap"):
        raise ValueError(f"rank must be round_trip, overlap or None, got {rank!r}")
    texts = _check_texts(texts)
    m = n * candidates
    with inference(model, opts.seed):
        z, params = posterior(model, texts)
        ids, _, _ = encode_texts(model.tokenizer, texts, model.config.maxlen, warn=False)
        forced = (
            None
            if keep_start == 0
            else _kept_starts(ids, m, keep_start, model.tokenizer.token_to_id(SEP), model.config.pad_token_id)
        )
        out = decode_texts(model, perturb_z(model, z, m, spread, params), opts, forced)
    pools = _distinct_variants(model, texts, ids, out, m)
    if candidates == 1 or rank is None:
        return [p[:n] for p in pools]
    return _best_variants(model, texts, z, pools, n, rank)


def _distinct_variants(model, texts, ids, out, m):
    """augment's decoded outputs (m per sentence, in order) -> per sentence, those that are neither
    empty nor a copy of the sentence, of its tokenised round trip (ids) or of an earlier variant."""
    key = lambda t: "".join(t.split())  # copies that differ by whitespace alone are copies
    pools = []
    for i, s in enumerate(texts):
        seen = {key(s), key(detokenize(model.tokenizer, ids[i].tolist()))}
        variants = []
        for v in out[i * m : (i + 1) * m]:
            if key(v) and key(v) not in seen:
                seen.add(key(v))
                variants.append(v)
        pools.append(variants)
    return pools


def _best_variants(model, texts, z, pools, n, rank):
    """Per sentence (code z), the n variants of its pool that `rank` ("round_trip" or "overlap", as
    augment says) scores highest, kept in pool order."""
    if rank == "overlap":
        scores = [[char_f1(v, s) for v in p] for s, p in zip(texts, pools)]
    else:
        flat = [v for p in pools for v in p]
        zv = model.encode(flat).to(z) if flat else z[:0]
        cos = _per_layer_cosine(
            model, zv, z.repeat_interleave(torch.tensor([len(p) for p in pools], device=z.device), 0)
        )
        it = iter(cos.tolist())
        scores = [[next(it) for _ in p] for p in pools]
    result = []
    for p, sc in zip(pools, scores):
        best = sorted(range(len(p)), key=lambda k: -sc[k])[:n]
        result.append([p[k] for k in sorted(best)])
    return result


def _kept_starts(ids, m, fraction, sep, pad):
    """Forced target tokens for m variants of each sentence of ids (B, maxlen) -> (B*m, maxlen - 1),
    -1 = free: each variant keeps the sentence's first k tokens, k uniform in 1..round(fraction x length)."""
    B, T = ids.shape
    body = ids[:, 1:]  # after [CLS]: the target tokens, [SEP] then padding
    lengths = (body != pad).sum(1) - (body == sep).sum(1)  # tokens before [SEP]
    top = (lengths.double() * fraction).round().long().clamp_min(1).repeat_interleave(m)
    k = (torch.rand(B * m) * top).long() + 1
    forced = body.repeat_interleave(m, dim=0).clone()
    forced[torch.arange(T - 1)[None] >= k[:, None]] = -1
    return forced


def _per_layer_cosine(model, a, b):
    """Mean over latent layers of the cosine between rows of a and b (N, D) -> (N,)."""
    return torch.stack([F.cosine_similarity(x, y, dim=-1) for x, y in zip(model.split_z(a), model.split_z(b))]).mean(0)


# Chosen with bench/transfer.py on three default checkpoints: docs/results.md, "Downstream on the default"
DEFAULT_STRENGTH = 4.0
DEFAULT_DIRECTION = "mean"


def transfer(
    model, texts, from_texts, to_texts, strength=DEFAULT_STRENGTH, method=DEFAULT_DIRECTION, return_z=False, **decoding
):
    """Each sentence of `texts` moved from the attribute of `from_texts` to that of `to_texts` (e.g.
    negative -> positive reviews): its posterior mean code plus strength x attribute_direction(FROM
    codes, TO codes), decoded. Strength 0 decodes the plain reconstruction; 1 moves a code by the gap
    between the two sets' means. Returns one sentence per input, in order."""
    opts = Decoding(**decoding)
    texts, from_texts, to_texts = _check_texts(texts), _check_texts(from_texts), _check_texts(to_texts)
    if not (from_texts and to_texts):
        raise ValueError("transfer needs at least one FROM sentence and one TO sentence")
    with inference(model, opts.seed):
        z, _ = posterior(model, texts)
        direction = attribute_direction(model, model.encode(from_texts), model.encode(to_texts), method=method)
        z = transfer_z(model, z, direction, strength)
        out = decode_texts(model, z, opts)
    return (out, z) if return_z else out
