"""Posterior-collapse diagnostics: KL per latent layer and dim, active units, mutual information.

Collapse is the decoder learning to ignore z while the KL pulls every posterior onto the prior
(Gaussian KL -> 0). Fixed-kappa vMF has a constant KL, so nothing pulls it there, but one of its
layers can still go unused while another carries the sentence (its codes closer together than its
noise). Three numbers see it from different sides, all computed from the posterior params of a
held-out set:

    kl_per_dim          E_x KL(q(z_d|x) || p(z_d)) per layer and dim (Gaussian; vMF's KL is one constant)
    active_units        dims whose E_q[z] varies over sentences: Var_x(E_q[z_d]) > delta (Burda et al. 2016)
    mutual_information  I(x; z) = E_x E_q(z|x)[log q(z|x) - log q(z)], q(z) the aggregate posterior
                        (1/N) sum_n q(z|x_n) over the same set (Optimus' calc_mi); for VQ, whose
                        encoder is deterministic, I(x; z) = H(z), the entropy of the codes picked

and each family's own (family.usage_metrics): "codebook" for VQ (perplexity, used fraction,
restarts per layer), "mixture" for gmm (component usage and its entropy, I(x; c), dispersion,
spread of the component means).

train.py logs them in every eval row (univae.training.evaluate) and prints `collapse_warning`.
"""

import contextlib
import math

import torch

from univae.latents import family_class

COLLAPSE_KL = 0.1  # nats per latent layer: below this a Gaussian layer tells the decoder almost nothing
COLLAPSE_AU = 0.1  # fraction of a layer's dims: a layer with fewer active units than this is collapsed
COLLAPSE_MI = 0.1  # fraction of log N: a layer whose code alone tells N sentences apart by less says almost nothing


def kl_per_dim(family, params_list):
    """(n_latent, z_dim) mean KL of each dim over the examples, or None where the KL does not split (vMF)."""
    per_layer = [family.kl_per_dim(p, layer=j) for j, p in enumerate(params_list)]
    if any(k is None for k in per_layer):
        return None
    return torch.stack([k.mean(0) for k in per_layer])


def active_units(means, delta=0.01):
    """means (N, D): E_q[z] per example. -> (number of active dims, (D,) variances over examples).

    A dim is active when the unbiased variance over examples of its posterior expectation exceeds
    delta: a dim the encoder leaves at the same value for every sentence carries nothing."""
    if means.shape[0] < 2:
        raise ValueError(f"active units need at least 2 examples, got {means.shape[0]}")
    variances = means.float().var(dim=0, unbiased=True)
    return int((variances > delta).sum()), variances


def expected_codes(family, params_list):
    """(N, n_latent * z_dim) E_q[z] per example, lowest latent layer first (the input of active_units)."""
    return torch.cat([family.expected_z(p, layer=j) for j, p in enumerate(params_list)], dim=-1)


def mutual_information(family, params_list, seed=0, chunk=256):
    """I(x; z) over the N examples whose per-layer posterior params are given -> (mi, [mi per layer]).

    Optimus' calc_mi: one z_m ~ q(z|x_m) per example, and log q(z_m) = logsumexp_n log q(z_m|x_n) - log N.
    The first term, E[log q(z|x)], is taken on the same samples (Optimus uses its closed form): with
    common samples the estimate is exactly 0 when all posteriors coincide, and never exceeds log N,
    the most that N examples can show. `mi` is for the whole code, whose posterior factorises over
    layers (log q(z|x) = sum_l log q(z_l|x)) but whose aggregate does not; the per-layer values
    treat each layer alone, and their sum is at least `mi`. Seeded and run under fork_rng, so it is
    deterministic and leaves the caller's random stream alone."""
    params_list = [p.float() for p in params_list]
    N = params_list[0].shape[0]
    if family.space == "codebook":
        return code_entropy(family, params_list)
    device = params_list[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        zs = [family.sample(p, layer=j) for j, p in enumerate(params_list)]
    per_layer = []  # (N, N) log q(z_m | x_n) of each layer, rows m, columns n
    for j, (z, p) in enumerate(zip(zs, params_list)):
        rows = [family.log_q(zc[:, None, :], p[None], layer=j) for zc in z.split(chunk)]  # (chunk, N) each
        per_layer.append(torch.cat(rows))

    def estimate(log_q):
        log_q_agg = torch.logsumexp(log_q, dim=1) - math.log(N)  # log q(z_m), (N,)
        return (log_q.diagonal() - log_q_agg).mean().item()

    return estimate(sum(per_layer)), [estimate(lq) for lq in per_layer]


def code_entropy(family, params_list):
    """VQ's I(x; z) over N examples: z is a function of x, so I = H(z), here the plug-in entropy of
    the codes picked (at most log N, like the estimator above) -> (whole code, [per layer])."""
    codes = torch.stack([family.codes(p, layer=j) for j, p in enumerate(params_list)], dim=-1)  # (N, n)

    def entropy(rows):
        counts = torch.unique(rows, dim=0, return_counts=True)[1].double()
        probs = counts / counts.sum()
        return -(probs * probs.log()).sum().item()

    return entropy(codes), [entropy(codes[:, j : j + 1]) for j in range(codes.shape[1])]


@torch.no_grad()
def posterior_params_of(model, ids, batch_size=128, autocast=None):
    """ids (N, maxlen) source token ids -> per-layer posterior params (N, param_dim), float32."""
    was_training = model.training
    model.eval()
    with autocast or contextlib.nullcontext():
        params = model.posterior_params_all(ids, batch_size)
    model.train(was_training)
    return [p.float() for p in params]


def latent_metrics(family, params_list, au_delta=0.01):
    """The eval-row diagnostics: mi, mi_per_layer, mi_max, au, au_per_layer (and kl_per_dim where defined).
    Empty for fewer than 2 examples: neither a variance nor an aggregate posterior exists then."""
    if params_list[0].shape[0] < 2:
        return {}
    mi, mi_per_layer = mutual_information(family, params_list)
    au, variances = active_units(expected_codes(family, params_list), au_delta)
    metrics = {
        "mi": mi,
        "mi_per_layer": mi_per_layer,
        "mi_max": math.log(params_list[0].shape[0]),  # the most the estimate can show, log N
        "au": au,
        "au_per_layer": [int((v > au_delta).sum()) for v in variances.split(family.z_dim)],
    }
    per_dim = kl_per_dim(family, params_list)
    if per_dim is not None:
        metrics["kl_per_dim"] = per_dim.tolist()
    metrics.update(family.usage_metrics(params_list))
    return metrics


def collapse_warning(metrics, config, au_delta=0.01):
    """One line naming what looks collapsed, the likely causes and the remedies, or None.

    Only where collapse is possible and these numbers can see it:

      gaussian, gmm  the KL pushes every posterior towards the prior, so a layer can collapse: its KL
                     below COLLAPSE_KL, or fewer than COLLAPSE_AU of its dims active; gmm also when
                     the mixture component says nothing about the sentence (I(x; c))
      vq             the KL is the constant log K, but the codebook can collapse onto one code
                     (perplexity below 2)
      vmf            with fixed kappa the KL is a constant: nothing pulls the posteriors together,
                     so there is no collapse in the KL sense. Nor do active units measure it: a
                     layer's E_q[z] is A_d(kappa) mu with |mu| = 1, so its per-dim variances over
                     sentences sum to at most A_d(kappa)^2 < 1, on average below 1/z_dim per dim.
                     At 64 dims and kappa 256 even codes spread evenly over the sphere give
                     0.88^2 / 64 ~ 0.012 per dim, a hair above delta 0.01, so any unevenness puts
                     dims below it: AU there says how evenly the code uses its dims, not that it
                     collapsed (the default run's "50 of 192").

    Every family but VQ (whose MI is its codes' entropy, seen by the perplexity): a layer whose MI
    alone is below COLLAPSE_MI of log N, the most N sentences can show. Its posterior means sit
    closer together than its own noise spreads them, whatever the KL: the layer passes the decoder
    almost nothing and pays its KL for noise. Under fixed-kappa vMF this is how a layer goes unused
    while another latent layer carries the sentence.
    """
    family = family_class(config.latent)
    problems = []
    if not family.kl_is_constant and "kl_per_layer" in metrics:
        low = [j for j, kl in enumerate(metrics["kl_per_layer"]) if kl < COLLAPSE_KL]
        if low:
            kls = ", ".join(f"{kl:.3f}" for kl in metrics["kl_per_layer"])
            problems.append(f"KL per layer [{kls}] nats, layer(s) {low} below {COLLAPSE_KL}")
    if not family.kl_is_constant and "au_per_layer" in metrics:
        low = [j for j, a in enumerate(metrics["au_per_layer"]) if a < COLLAPSE_AU * config.z_dim]
        if low:
            problems.append(
                f"active units {metrics['au']} of {config.latent_dim} (delta {au_delta:g}), "
                f"layer(s) {low} with fewer than {COLLAPSE_AU:.0%} of {config.z_dim} dims"
            )
    if not family.has_codes and "mi_max" in metrics:
        low = [j for j, mi in enumerate(metrics["mi_per_layer"]) if mi < COLLAPSE_MI * metrics["mi_max"]]
        if low:
            mis = ", ".join(f"{mi:.2f}" for mi in metrics["mi_per_layer"])
            problems.append(
                f"MI per layer [{mis}] nats of at most log N = {metrics['mi_max']:.2f}, layer(s) {low} below "
                f"{COLLAPSE_MI:.0%} of it: that code barely tells the sentences apart"
            )
    if "codebook" in metrics:
        perplexity = metrics["codebook"]["perplexity"]
        low = [j for j, p in enumerate(perplexity) if p < 2]
        if low:
            problems.append(
                f"codebook perplexity [{', '.join(f'{p:.2f}' for p in perplexity)}], layer(s) {low} use about one code"
            )
    if "mixture" in metrics:
        mi_c = metrics["mixture"]["mi_c"]
        low = [j for j, mi in enumerate(mi_c) if mi < COLLAPSE_KL]
        if low:
            problems.append(
                f"I(x; c) per layer [{', '.join(f'{mi:.3f}' for mi in mi_c)}] nats, layer(s) {low} "
                f"below {COLLAPSE_KL}: the mixture component says nothing about the sentence"
            )
    if not problems:
        return None
    cause = (
        "the decoder may be modelling the text without z (KL pressure too strong early, or a decoder strong enough alone)"
        if not family.kl_is_constant
        else "the decoder reads the sentence from the other codes, or from none"
    )
    return f"warning: posterior collapse? {'; '.join(problems)} -- {cause}; try {family.collapse_remedies}"
