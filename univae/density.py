"""A density fitted to the aggregate posterior: what sampling and edits draw from (docs/design.md,
"Sampling and editing").

The training prior (uniform on each vMF sphere, N(0, I)) is what the KL is measured against, but a
high-rate posterior covers a small part of it: most of its draws land where no training sentence's
code lies, and decode badly. So after training we fit a Gaussian mixture to the training codes and
draw from that instead:

    z_i ~ q(z | x_i)                  posterior samples of up to N training sentences (fit_prior), so
                                      the density covers the posterior noise the decoder was trained
                                      on, not only the means
    p(z) = sum_k w_k N(z; mu_k, S_k)  over the whole code (latent_dim dims, every latent layer at once,
                                      so the correlations between layers are kept); full covariances,
                                      S_k = L_k L_k^T, with a ridge of 1e-4 x the codes' mean variance
                                      on the diagonal, so every S_k is well conditioned

fitted by EM in float64 from a seeded k-means++ start (deterministic). Drawing (FittedPrior):

    sample(n)                        c ~ w, z ~ N(mu_c, S_c)
    conditional_sample(z, keep, n)   the kept dims A stay, the others B are drawn from p(z_B | z_A):
                                     c ~ w_k N(z_A; mu_kA, S_kAA) (normalised over k), then
                                     z_B ~ N(mu_cB + S_cBA S_cAA^-1 (z_A - mu_cA), S_cBB - S_cBA S_cAA^-1 S_cAB)

A vMF code has one unit sphere per latent layer, and a Gaussian draw does not lie on it: a drawn
layer is normalised, and a layer only partly redrawn keeps its kept dims exactly and has the drawn
part rescaled to fill the remaining norm (generate.fill_spheres, as uniform edits do). Gaussian
and gmm codes are used as drawn.

VQ gets no fitted prior (fit_prior refuses). Its posterior is a point mass on one of K codes per
layer, so the aggregate posterior is a discrete distribution over code tuples: a continuous density
on the code vectors would be ridge-wide spikes at the codes, and its draws would have to be snapped
back to codes anyway. VQ's draws stay uniform codes; what would fit there is a categorical prior
over codes (VQ-VAE's autoregressive prior), not this.

Why K = 8 by default: a full covariance in D = 192 dims has D(D+1)/2 = 18,528 entries, and from
20,000 codes K components leave 20,000 / K codes each to estimate them: 2,500 (13 per dim) at
K = 8, 1,250 (6.5 per dim) at K = 16, where the sample covariances start to memorise their codes.
Measured on synthetic codes shaped like the default model's (3 vMF layers x 64 dims at kappa 256
around 10 or 40 clustered directions, 20,000 codes to fit, 2,000 held out), the held-out mean
log-likelihood per code was best at K = 8 (40 clusters) or 4 (10 clusters; K = 8 within 0.8 nats)
and about 4 nats below the best at K = 16, 11-15 at K = 32, while the training one kept rising.
Real codes are not these, so the command reports the held-out number (the val split's codes) next
to the training one: a K whose held-out number falls while the training one rises is overfitting.

Saved beside the weights as prior.safetensors: `weights` (K,), `means` (K, D) and `scale_tril`
(K, D, D) in float64, and a JSON object in the safetensors header under "univae_prior" (n_components,
n_sentences, samples_per_sentence, source, seed, mean_log_likelihood, ...). Nothing is pickled.

`python -m univae.prior` (univae/prior.py) fits one for an existing checkpoint.
"""

import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from univae.generate import fill_spheres

PRIOR_FILE = "prior.safetensors"
HEADER_KEY = "univae_prior"
DEFAULT_COMPONENTS = 8
DEFAULT_MAX_SENTENCES = 20_000
# Prior samples draw from the mixture with each component's standard deviation scaled by this (a
# "temperature", as in Glow's reduced-temperature sampling): 0.5 brought the first-character
# plausibility of prior samples to that of real held-out sentences, at little cost in diversity
# (docs/results.md, "The latent space"). Edits draw from the conditional at its full spread.
SAMPLE_SPREAD = 0.5
RIDGE = 1e-4  # times the codes' mean variance, added to every covariance's diagonal
LOG_2PI = math.log(2 * math.pi)
# EM's passes over the codes take this many rows at a time: each temporary (rows x D float64) is then
# 6 MB at D = 192, where a whole pass over 20,000 codes would allocate 30 MB per temporary
ROWS_PER_PASS = 4096


# ----------------------------------------------------------------------------- the density


def gaussian_log_pdf(x, mean, scale_tril):
    """log N(x; mean, L L^T) for rows x (N, D), one component: (N,). float64 in, float64 out."""
    y = torch.linalg.solve_triangular(scale_tril, (x - mean).T, upper=False)  # (D, N): L^-1 (x - mean)
    return -0.5 * (y.pow(2).sum(0) + x.shape[1] * LOG_2PI) - scale_tril.diagonal().log().sum()


def joint_log_probs(x, weights, means, scale_tril):
    """log w_k + log N(x; mu_k, S_k) for every row and component: x (N, D) -> (N, K). Rows go
    ROWS_PER_PASS at a time, so the temporaries stay a few MB whatever N is."""
    return (
        torch.cat(
            [
                torch.stack([gaussian_log_pdf(rows, m, L) for m, L in zip(means, scale_tril)], dim=-1)
                for rows in x.split(ROWS_PER_PASS)
            ]
        )
        + weights.log()
    )


class FittedPrior:
    """A Gaussian mixture over whole codes (module docstring), float64 on the CPU; draws come back
    as float32 on the CPU (the callers move them). Not an nn.Module on purpose: as an attribute of
    the model it would join model.state_dict(), and it lives in its own file (prior.safetensors).

    space, z_dim: the code's layout, "sphere" (vMF: each z_dim-wide layer back on its unit sphere
    after a draw) or "euclidean" (Gaussian, gmm: draws used as they are). info: what fit_prior
    recorded (saved in the header)."""

    def __init__(self, weights, means, scale_tril, z_dim, space="euclidean", info=None):
        self.weights = weights.double().cpu()  # (K,)
        self.means = means.double().cpu()  # (K, D)
        self.scale_tril = scale_tril.double().cpu()  # (K, D, D), lower triangular, positive diagonal
        self.z_dim, self.space = int(z_dim), space
        self.info = dict(info or {})
        self._factors = {}  # keep mask -> what conditional() needs that does not depend on z_A

    @property
    def n_components(self):
        return self.weights.shape[0]

    @property
    def dim(self):
        return self.means.shape[1]

    @property
    def covariance(self):
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)  # (K, D, D)

    def log_prob(self, z):
        """log p(z) per row of z (N, D) -> (N,) float64."""
        x = z.detach().reshape(-1, self.dim).double().cpu()
        return torch.logsumexp(joint_log_probs(x, self.weights, self.means, self.scale_tril), dim=-1)

    def _draw(self, probs, means, scale_tril, n, generator):
        """n draws from the mixture with component probabilities probs (K,): c first, then the noise."""
        c = torch.multinomial(probs, n, replacement=True, generator=generator)
        eps = torch.randn(n, means.shape[1], dtype=torch.float64, generator=generator)
        out = torch.empty_like(eps)
        for k in c.unique().tolist():  # per component: (n, D, D) gathered factors would not fit in memory
            rows = c == k
            out[rows] = means[k] + eps[rows] @ scale_tril[k].T
        return out

    def _normalise_layers(self, z, layers):
        for j in layers:
            z[:, j * self.z_dim : (j + 1) * self.z_dim] = F.normalize(
                z[:, j * self.z_dim : (j + 1) * self.z_dim], dim=-1
            )
        return z

    def sample(self, n, generator=None, spread=1.0):
        """n codes (n, D) float32; on a vMF model each layer normalised onto its sphere. spread scales
        every component's standard deviation (1 = the fitted density; sampling uses SAMPLE_SPREAD)."""
        if not spread > 0:
            raise ValueError(f"spread must be positive, got {spread}")
        z = self._draw(self.weights, self.means, self.scale_tril * spread, n, generator).float()
        if self.space == "sphere":
            self._normalise_layers(z, range(self.dim // self.z_dim))
        return z

    def conditional(self, z_kept, keep):
        """The mixture p(z_B | z_A) for the kept dims A (keep, bool (D,)) at values z_kept (|A|,):
        -> (log component posterior (K,), conditional means (K, |B|), conditional Cholesky factors
        (K, |B|, |B|)), with the formulas of the module docstring; B = the dims not kept."""
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        A, B = keep.nonzero()[:, 0], (~keep).nonzero()[:, 0]
        if A.numel() == 0:
            return self.weights.log(), self.means, self.scale_tril
        L_A, W, scale_tril = self._conditioning(keep, A, B)
        diff = (z_kept.detach().double().cpu().reshape(-1) - self.means[:, A])[..., None]  # (K, a, 1)
        y = torch.linalg.solve_triangular(L_A, diff, upper=False)  # L_A^-1 (z_A - mu_A)
        log_marginal = -0.5 * (y.pow(2).sum((1, 2)) + A.numel() * LOG_2PI) - L_A.diagonal(dim1=-2, dim2=-1).log().sum(
            -1
        )
        log_post = torch.log_softmax(self.weights.log() + log_marginal, dim=-1)
        means = self.means[:, B] + (W.transpose(1, 2) @ y)[..., 0]  # mu_B + S_BA S_AA^-1 (z_A - mu_A)
        return log_post, means, scale_tril

    def _conditioning(self, keep, A, B):
        """(L_A, W, conditional Cholesky factor) for a keep mask: chol(S_AA), L_A^-1 S_AB and
        chol(S_BB - W^T W). They depend on the mask alone, so they are kept for the last few masks
        (an evaluation edits every sentence with the same dims)."""
        key = keep.numpy().tobytes()
        if key not in self._factors:
            S = self.covariance
            L_A = torch.linalg.cholesky(S[:, A][:, :, A])  # (K, a, a)
            W = torch.linalg.solve_triangular(L_A, S[:, A][:, :, B], upper=False)  # (K, a, b)
            cov = S[:, B][:, :, B] - W.transpose(1, 2) @ W  # S_BB - S_BA S_AA^-1 S_AB
            if len(self._factors) >= 8:
                self._factors.pop(next(iter(self._factors)))
            self._factors[key] = L_A, W, torch.linalg.cholesky(0.5 * (cov + cov.transpose(1, 2)))
        return self._factors[key]

    def conditional_sample(self, z, keep, n, generator=None):
        """n copies of the code z (D,) with the dims not in `keep` (bool (D,)) drawn from p(z_B | z_A),
        in z's dtype and device. Kept dims keep their exact values; on a vMF model a wholly drawn
        layer is normalised, a partly drawn one filled to unit norm (generate.fill_spheres)."""
        keep = torch.as_tensor(keep, dtype=torch.bool, device=z.device).reshape(-1)
        z = z.reshape(-1)
        if keep.numel() != self.dim or z.numel() != self.dim:
            raise ValueError(
                f"the fitted prior is over {self.dim} dims; got a code of {z.numel()} and a mask of {keep.numel()}"
            )
        out = z.reshape(1, -1).expand(n, -1).clone()
        drawn = (~keep).nonzero()[:, 0]
        if drawn.numel() == 0:
            return out
        log_post, means, scale_tril = self.conditional(z[keep], keep)
        out[:, drawn] = self._draw(log_post.exp(), means, scale_tril, n, generator).to(out)
        if self.space == "sphere":
            k = self.z_dim
            whole = [j for j in range(self.dim // k) if not keep[j * k : (j + 1) * k].any()]
            self._normalise_layers(out, whole)
            fill_spheres(out, drawn, k)
        return out

    # ------------------------------------------------------------------ file

    def save(self, path):
        """prior.safetensors: the three tensors, and the layout and info as JSON in the header;
        written to a temporary name and moved into place."""
        tensors = {
            "weights": self.weights.contiguous(),
            "means": self.means.contiguous(),
            "scale_tril": self.scale_tril.contiguous(),
        }
        header = {"space": self.space, "z_dim": self.z_dim, **self.info}
        tmp = path + ".tmp"
        save_file(tensors, tmp, metadata={"format": "pt", HEADER_KEY: json.dumps(header, ensure_ascii=False)})
        os.replace(tmp, path)


def _one_line(e):
    return " ".join(str(e).split())


def load_prior(path, model=None):
    """prior.safetensors -> FittedPrior. Anything unreadable or inconsistent, or (with `model`) a
    prior for another code layout, is a one-line ValueError naming the file."""
    try:
        tensors = load_file(path)
        with safe_open(path, "pt") as f:
            header = json.loads((f.metadata() or {})[HEADER_KEY])
        weights, means, scale_tril = tensors["weights"], tensors["means"], tensors["scale_tril"]
        space, z_dim = header.pop("space"), int(header.pop("z_dim"))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(
            f"{path}: not a readable fitted prior ({_one_line(e)}); refit it with "
            "python -m univae.prior --checkpoint DIR"
        ) from None
    K, D = weights.shape[0], means.shape[-1]
    if not (
        weights.dim() == 1
        and means.shape == (K, D)
        and scale_tril.shape == (K, D, D)
        and K > 0
        and z_dim > 0
        and D % z_dim == 0
    ):
        raise ValueError(
            f"{path}: inconsistent shapes weights {tuple(weights.shape)}, means {tuple(means.shape)}, "
            f"scale_tril {tuple(scale_tril.shape)} (z_dim {z_dim})"
        )
    if not (
        all(t.isfinite().all() for t in (weights, means, scale_tril))
        and (weights >= 0).all()
        and abs(weights.sum().item() - 1) < 1e-6
        and (scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
        and torch.equal(scale_tril, scale_tril.tril())
    ):
        raise ValueError(
            f"{path}: not a valid mixture (weights must sum to 1, scale_tril be lower triangular "
            "with a positive diagonal, everything finite)"
        )
    prior = FittedPrior(weights, means, scale_tril, z_dim, space, header)
    if model is not None:
        c = model.config
        if (D, z_dim, space) != (c.latent_dim, c.z_dim, model.family.space):
            raise ValueError(
                f"{path}: a prior for {D}-dim codes of {z_dim}-dim {space} layers, but the model's "
                f"codes are {c.latent_dim} dims of {c.z_dim}-dim {model.family.space} layers"
            )
    return prior


# ----------------------------------------------------------------------------- EM


def kmeans_pp(x, k, generator):
    """k rows of x (N, D) as initial centres (Arthur & Vassilvitskii 2007): the first uniformly,
    each next one with probability proportional to the squared distance to the nearest centre."""
    N = x.shape[0]
    first = int(torch.randint(N, (1,), generator=generator))
    centres = [x[first]]
    sq_dist = lambda c: torch.cat([(rows - c).pow(2).sum(-1) for rows in x.split(ROWS_PER_PASS)])
    d2 = sq_dist(x[first])
    for _ in range(1, k):
        p = d2.cpu()
        i = (
            int(torch.multinomial(p / p.sum(), 1, generator=generator))
            if p.sum() > 0
            else int(torch.randint(N, (1,), generator=generator))
        )  # every row sits on a centre already
        centres.append(x[i])
        d2 = torch.minimum(d2, sq_dist(x[i]))
    return torch.stack(centres)


def m_step(x, resp, ridge):
    """Weights, means and Cholesky factors from responsibilities resp (N, K); an empty component
    (sklearn's 10 eps) gets weight ~0 and covariance ridge * I instead of a division by zero."""
    nk = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # (K,)
    means = resp.T @ x / nk[:, None]
    eye = ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    scale_tril = []
    for k in range(resp.shape[1]):
        scatter = 0  # sum_i resp_ik (x_i - mu_k)(x_i - mu_k)^T, ROWS_PER_PASS rows at a time
        for rows, r in zip(x.split(ROWS_PER_PASS), resp.split(ROWS_PER_PASS)):
            d = rows - means[k]
            scatter = scatter + (r[:, k : k + 1] * d).T @ d
        scale_tril.append(torch.linalg.cholesky(scatter / nk[k] + eye))
    return nk / nk.sum(), means, torch.stack(scale_tril)


def fit_gmm(x, n_components, seed=0, max_iter=100, tol=1e-3):
    """EM for a full-covariance Gaussian mixture on rows x (N, D), in float64 on x's device.

    k-means++ centres (seeded: deterministic), a hard assignment to the nearest one, then EM until
    the mean log-likelihood per row gains less than `tol` nats (sklearn's default) or max_iter.
    Returns (weights, means, scale_tril, info) with info = mean_log_likelihood, n_iter, converged, ridge."""
    x = x.double()
    N, D = x.shape
    if not 1 <= n_components <= N:
        raise ValueError(f"a mixture of {n_components} components needs at least {n_components} codes, got {N}")
    ridge = max(RIDGE * x.var(0, unbiased=False).mean().item(), 1e-12)
    g = torch.Generator().manual_seed(seed)
    centres = kmeans_pp(x, n_components, g)
    nearest = torch.cdist(x, centres).argmin(-1)
    params = m_step(x, F.one_hot(nearest, n_components).double(), ridge)
    log_p = joint_log_probs(x, *params)
    ll = torch.logsumexp(log_p, -1).mean().item()
    converged, n_iter = False, 0
    while n_iter < max_iter and not converged:
        n_iter += 1
        params = m_step(x, torch.softmax(log_p, -1), ridge)  # E-step (responsibilities), then M-step
        log_p = joint_log_probs(x, *params)
        new = torch.logsumexp(log_p, -1).mean().item()
        converged, ll = abs(new - ll) < tol, new
    return (*params, {"mean_log_likelihood": ll, "n_iter": n_iter, "converged": converged, "ridge": ridge})


# ----------------------------------------------------------------------------- fitting to a model


@torch.no_grad()
def posterior_samples(model, ids, samples_per_sentence=1, batch_size=256):
    """z ~ q(z | x) for source ids (N, maxlen): (N * samples_per_sentence, latent_dim) float32, the
    samples of one sentence together. Uses the global RNG (fit_prior forks and seeds it)."""
    out = []
    for _, params in model.posterior_chunks(ids, batch_size):
        zs = [
            torch.cat([model.family.sample(p, layer=j) for j, p in enumerate(params)], dim=-1).float()
            for _ in range(samples_per_sentence)
        ]
        out.append(torch.stack(zs, dim=1).flatten(0, 1))
    return torch.cat(out)


def fit_prior(
    model,
    ids,
    n_components=DEFAULT_COMPONENTS,
    max_sentences=DEFAULT_MAX_SENTENCES,
    samples_per_sentence=1,
    seed=0,
    source=None,
    heldout_ids=None,
    max_iter=100,
    batch_size=256,
):
    """Fit a FittedPrior to posterior samples of the sentences ids (N, maxlen) (training sentences,
    source token ids as univae.tokenizer.encode_texts gives them); a seeded random subset of
    max_sentences when there are more. heldout_ids (optional): sentences whose codes' mean
    log-likelihood goes into info next to the training one. source: a note saved in info (which
    split of which corpus). Eval mode, no gradients, and a forked, seeded RNG: deterministic, and
    the caller's random stream is left exactly where it was (train.py's resume is bit-exact).
    The model's training mode is restored; set model.fitted_prior to use the result."""
    if model.family.space == "codebook":
        raise ValueError(
            "a vq model gets no fitted prior: its codes are discrete, and its draws stay uniform "
            "codes (this module's docstring says why)"
        )
    if max_sentences < 1 or samples_per_sentence < 1:
        raise ValueError(
            f"max_sentences and samples_per_sentence must be at least 1, got {max_sentences}, {samples_per_sentence}"
        )
    if len(ids) > max_sentences:
        subset = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))[:max_sentences]
        ids = ids[subset.sort().values]
    was_training = model.training
    model.eval()
    devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            z = posterior_samples(model, ids, samples_per_sentence, batch_size)
            heldout = (
                None
                if heldout_ids is None or not len(heldout_ids)
                else posterior_samples(model, heldout_ids, samples_per_sentence, batch_size)
            )
    finally:
        model.train(was_training)
    weights, means, scale_tril, info = fit_gmm(z, n_components, seed=seed, max_iter=max_iter)
    info = {
        "n_components": n_components,
        "n_sentences": len(ids),
        "samples_per_sentence": samples_per_sentence,
        "n_codes": len(z),
        "source": source,
        "seed": seed,
        **info,
    }
    prior = FittedPrior(weights, means, scale_tril, model.config.z_dim, model.family.space, info)
    if heldout is not None:
        prior.info["heldout_mean_log_likelihood"] = prior.log_prob(heldout).mean().item()
        prior.info["heldout_n_sentences"] = len(heldout_ids)
    return prior
