"""Latent families for the [CLS] bottleneck.

A family turns the projected [CLS] vector of one latent layer ("params", `param_dim` wide) into a
code z (`z_dim` wide). Every family has the same small interface:

    mean(params)          deterministic code (posterior mean direction / mean)
    sample(params)        reparameterised posterior sample
    kl(params)            KL(q(z|x) || p(z)) per example, shape (B,)
    kl_per_dim(params)    the same KL split over dims, (B, z_dim), or None where it does not split (vMF)
    kl_is_constant        True when kl does not depend on params (fixed-kappa vMF, VQ): nothing to optimise
    prior(n, device)      n draws from the prior, (n, z_dim)
    log_q(z, params)      log q(z|x) (and layer=, like the others); broadcasts, so z (M, 1, k) against params (1, N, p) gives (M, N)
                          (not for VQ, whose posterior is a point mass)
    expected_z(params)    E_q[z] per example (for active units)
    log_prior(z, layer)   log p(z) per row of one latent layer's code (not for VQ, whose prior is over code indices)
    space                 where codes live, what generate.py's latent arithmetic branches on:
                          "sphere" (vMF: slerp, renormalise), "euclidean" (Gaussian, mixture: linear),
                          "codebook" (VQ: results snapped to the nearest code)
    batch_terms(params_list, zs)   extra training terms of a batch, summed over latent layers, that
                          UniVAE.forward puts in its output (VQ: commitment; mixture: kl_c, dispersion, mi_c)
    usage_metrics(params_list)     family-specific eval diagnostics (VQ: "codebook", mixture: "mixture")

and class attributes that callers ask instead of testing the family's name (`family_class(name)`
gives the class from the config's name, before any model exists):

    has_codes             sentences map to discrete code indices (VQ): --codes, z_to_codes
    has_components        the prior is a mixture with named components (gmm): --component
    fits_prior            python -m univae.prior can fit a density to its codes (not VQ: uniform codes)
    edits_whole_layers    --replace-dims ranges count code positions, one per latent layer (VQ),
                          rather than dims of z
    constant_kl_reason    why the KL is constant, for error messages (kl_is_constant families)
    collapse_remedies     flags to try when the posterior collapses, for the warning
    describe(config)      the family's own settings in a few words ("kappa 32", "512 codes per layer (l2)")

Families with per-layer state (VQ's codebooks, the mixture's components) hold it for all latent
layers at once and take `layer=j` (0 = lowest latent layer) in every method that needs it; vMF and
Gaussian accept and ignore it.

The diagnostics (kl_per_dim, log_q, expected_z) compute in float32 whatever the dtype of
params (autocast hands them bf16).
"""

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from univae.vmf import inverse_cdf, log_sphere_area, vmf_cosine_cdf, vmf_kl_uniform, vmf_log_normalizer, vmf_mean_cosine


class Family(nn.Module):
    """Defaults shared by the families; each overrides what applies to it."""

    space = "euclidean"
    kl_is_constant = False
    constant_kl_reason = ""
    has_codes = False
    has_components = False
    fits_prior = True
    edits_whole_layers = False
    collapse_remedies = "--kl-anneal cyclical, --free-bits 0.5, --word-dropout 0.3, --target-rate 10, --bow-weight 1"

    @classmethod
    def describe(cls, config):
        return ""

    def batch_terms(self, params_list, zs):
        return {}

    def usage_metrics(self, params_list):
        return {}


class VMF(Family):
    """von Mises-Fisher posterior with fixed kappa, uniform prior on the sphere (the reference).

    The cosine w = mu.z has density ∝ exp(kappa w) (1 - w^2)^((d-3)/2) on [-1, 1], independent of
    mu. We tabulate its CDF once and sample w by inverse-CDF interpolation (as the reference does),
    then z = w mu + sqrt(1 - w^2) nu with nu a uniform unit vector orthogonal to mu. Because w does
    not depend on mu, gradients reach mu through this expression: the sample is reparameterised.

    `kappa` is one concentration for every latent layer or a sequence of one per layer (lowest
    first); with several, the methods that depend on it need `layer=`.
    """

    def __init__(self, z_dim, kappa, grid=1 << 16):
        super().__init__()
        self.kappas = tuple(float(k) for k in kappa) if isinstance(kappa, (list, tuple)) else (float(kappa),)
        self.z_dim, self.param_dim = z_dim, z_dim
        w, cdfs = vmf_cosine_cdf(self.kappas, z_dim, grid)
        self.register_buffer("cdf", cdfs.float(), persistent=False)  # (layers, grid + 1)
        self.register_buffer("w_grid", w.float(), persistent=False)
        self.kl_consts = [vmf_kl_uniform(k, z_dim) for k in self.kappas]
        self.log_norms = [vmf_log_normalizer(k, z_dim) for k in self.kappas]
        self.mean_cosines = [vmf_mean_cosine(k, z_dim) for k in self.kappas]

    space = "sphere"
    constant_kl_reason = "with fixed kappa"
    collapse_remedies = "one latent layer fewer (--num-latent-layers), a bag of words on that layer (--bow-layers)"

    @classmethod
    def describe(cls, config):
        kappa = config.kappa if isinstance(config.kappa, (list, tuple)) else [config.kappa]
        return f"kappa {','.join(f'{k:g}' for k in kappa)}"

    def _index(self, layer):
        if len(self.kappas) == 1:
            return 0
        if layer is None:
            raise ValueError(f"the latent layers have different kappas {list(self.kappas)}: pass layer=")
        return layer

    def mean(self, params, layer=None):
        return F.normalize(params, dim=-1)

    def sample_cosine(self, shape, device, layer=None):
        """w = mu.z for vMF samples, by inverse-CDF interpolation of the tabulated CDF."""
        return inverse_cdf(self.cdf[self._index(layer)], self.w_grid, torch.rand(shape, device=device))

    def sample(self, params, layer=None):
        mu = self.mean(params)
        w = self.sample_cosine(mu.shape[:-1] + (1,), mu.device, layer).to(mu.dtype)
        eps = torch.randn_like(mu)
        nu = F.normalize(eps - (eps * mu).sum(-1, keepdim=True) * mu, dim=-1)
        return w * mu + torch.sqrt(1 - w * w) * nu

    kl_is_constant = True

    def kl(self, params, layer=None):
        return params.new_full(params.shape[:-1], self.kl_consts[self._index(layer)])

    def kl_per_dim(self, params, layer=None):
        return None  # the KL to the uniform prior is a property of the whole sphere, not of coordinates

    def prior(self, n, device=None, layer=None):
        return F.normalize(torch.randn(n, self.z_dim, device=device), dim=-1)

    def log_prior(self, z, layer=None):
        """The uniform density on the sphere: minus the log of its area, for every z."""
        return z.new_full(z.shape[:-1], -log_sphere_area(z.shape[-1]), dtype=torch.float32)

    def log_q(self, z, params, layer=None):
        i = self._index(layer)
        return self.log_norms[i] + self.kappas[i] * (z.float() * self.mean(params.float())).sum(-1)

    def expected_z(self, params, layer=None):
        # E[z] = E[w] mu: the perpendicular part averages out over the sub-sphere
        return self.mean_cosines[self._index(layer)] * self.mean(params.float())


class Gaussian(Family):
    """Diagonal Gaussian posterior N(mu, diag(exp(logvar))), prior N(0, I); params = [mu | logvar].

    Nothing bounds logvar: as in Optimus, the KL term itself keeps it near 0 (sigma near 1). With
    the down-projection's small init (std 0.02) every posterior starts as the prior: KL ~ 0, and
    z is pure noise until the encoder learns to say something."""

    kl_is_constant = False

    def __init__(self, z_dim):
        super().__init__()
        self.z_dim = z_dim
        self.param_dim = 2 * z_dim

    def split(self, params):
        mu, logvar = params.float().chunk(2, dim=-1)
        return mu, logvar

    def mean(self, params, layer=None):
        return params[..., : self.z_dim]

    def sample(self, params, layer=None):
        mu, logvar = self.split(params)
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def kl_per_dim(self, params, layer=None):
        """KL(N(mu, s^2) || N(0, 1)) per dim = (mu^2 + s^2 - 1 - log s^2) / 2, (..., z_dim)."""
        mu, logvar = self.split(params)
        return 0.5 * (mu * mu + logvar.exp() - 1 - logvar)

    def kl(self, params, layer=None):
        return self.kl_per_dim(params).sum(-1)

    def prior(self, n, device=None, layer=None):
        return torch.randn(n, self.z_dim, device=device)

    def log_prior(self, z, layer=None):
        """log N(z; 0, I)."""
        return -0.5 * (z.float().pow(2) + math.log(2 * math.pi)).sum(-1)

    def log_q(self, z, params, layer=None):
        mu, logvar = self.split(params)
        return -0.5 * ((z.float() - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)

    def expected_z(self, params, layer=None):
        return self.split(params)[0]


class VQ(Family):
    """Vector quantisation (VQ-VAE, van den Oord et al. 2017), one codebook of K codes per latent layer.

    params = h, the projected [CLS] vector (z_dim wide). For latent layer l with codes e_1..e_K:

        c = argmin_k d(h, e_k)     d = |h - e_k|^2 ("l2"), or |h/|h| - e_k/|e_k||^2 = 2 - 2 cos ("cosine",
                                   where h and the codes are unit vectors from then on)
        z = e_c + (h - sg(h))      straight-through: the decoder sees exactly e_c, dL/dh = dL/dz
        commitment = |h - sg(e_c)|^2 / z_dim, batch mean, summed over layers (weight vq_beta)

    The codebook is not trained by gradients but by exponential moving averages (Razavi et al. 2019),
    updated in training mode by `sample` (the training forward's path) with the batch it quantised:

        N_k <- g N_k + (1 - g) n_k            n_k = #{i: c_i = k}          g = decay
        m_k <- g m_k + (1 - g) sum_{c_i=k} h_i
        e_k  = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing)

    A code no batch row picked for `dead_steps` training steps in a row is re-seeded with a random
    row of the batch (Dhariwal et al. 2020): e_k = m_k = h_r, N_k = 1. A fresh codebook counts as
    unused that long already, so the first training batch seeds every code it does not pick (a
    data-dependent init). The draws use the global RNG: deterministic, and exactly resumed. Under
    DDP the counts and sums are all-reduced; DDP's buffer broadcast then gives every rank rank 0's
    restarts. Codebooks and statistics are persistent buffers: they live in model.safetensors.

    The posterior is a point mass on one of K codes and the prior is uniform over them, so the
    KL is the constant log K per layer (kl_is_constant, like fixed-kappa vMF) and there is no log_q."""

    space = "codebook"
    kl_is_constant = True
    constant_kl_reason = "(log K per layer)"
    has_codes = True
    fits_prior = False
    edits_whole_layers = True
    collapse_remedies = "a smaller --vq-dead-steps, --vq-distance cosine, --word-dropout 0.3, --bow-weight 1"

    @classmethod
    def describe(cls, config):
        return f"{config.codebook_size} codes per layer ({config.vq_distance})"

    def __init__(self, n_layers, z_dim, size, distance="l2", decay=0.99, dead_steps=100, eps=1e-5):
        super().__init__()
        self.z_dim, self.param_dim, self.size = z_dim, z_dim, size
        self.distance, self.decay, self.dead_steps, self.eps = distance, decay, dead_steps, eps
        codebook = torch.randn(n_layers, size, z_dim)
        self.register_buffer("codebook", codebook)  # (n, K, z_dim) e_k; normalised at use for cosine
        self.register_buffer("ema_count", torch.ones(n_layers, size))  # N_k
        self.register_buffer("ema_sum", codebook.clone())  # m_k
        self.register_buffer("unused_steps", torch.full((n_layers, size), dead_steps, dtype=torch.long))
        self.register_buffer("restarts", torch.zeros(n_layers, dtype=torch.long))  # codes re-seeded so far

    def vectors(self, layer):
        """(K, z_dim) the code vectors of a layer, as the decoder sees them."""
        e = self.codebook[layer]
        return F.normalize(e, dim=-1) if self.distance == "cosine" else e

    def project(self, params):
        """The encoder's vector in the space the codes live in (float32)."""
        h = params.float()
        return F.normalize(h, dim=-1) if self.distance == "cosine" else h

    @torch.no_grad()
    def distances(self, h, layer):
        """(..., K) squared distances from projected h (..., z_dim) to every code of the layer, in
        float32 even under autocast (a bf16 matmul would pick wrong codes among close ones)."""
        e = self.vectors(layer)
        with torch.autocast(h.device.type, enabled=False):
            return h.pow(2).sum(-1, keepdim=True) - 2 * h @ e.T + e.pow(2).sum(-1)

    def codes(self, params, layer):
        """LongTensor (...,): the nearest code of each row."""
        return self.distances(self.project(params), layer).argmin(-1)

    def quantize(self, params, layer):
        """-> (h, codes, e_c): the projected input, its nearest codes and their vectors (copies)."""
        h = self.project(params)
        codes = self.distances(h, layer).argmin(-1)
        return h, codes, self.vectors(layer)[codes]

    def mean(self, params, layer=None):
        h, _, e = self.quantize(params, layer)
        return e + (h - h.detach())  # h - h is exactly 0: the value is e_c to the bit

    def sample(self, params, layer=None):
        """The training forward's code: the nearest code (the posterior is a point mass), and in
        training mode the EMA update of this layer's codebook with the batch just quantised."""
        h, codes, e = self.quantize(params, layer)
        if self.training:
            self.update(h.detach(), codes, layer)
        return e + (h - h.detach())

    @torch.no_grad()
    def update(self, h, codes, layer):
        """One EMA step and dead-code restart for `layer` with projected rows h (B, z_dim) and their codes (B,)."""
        K = self.size
        onehot = F.one_hot(codes, K).type_as(h)  # (B, K)
        with torch.autocast(h.device.type, enabled=False):
            count, total = onehot.sum(0), onehot.T @ h  # n_k (K,), sum of rows per code (K, z_dim)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(count)
            dist.all_reduce(total)
        self.ema_count[layer].mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum[layer].mul_(self.decay).add_(total, alpha=1 - self.decay)
        n = self.ema_count[layer].sum()
        smoothed = (self.ema_count[layer] + self.eps) / (n + K * self.eps) * n
        self.codebook[layer] = self.ema_sum[layer] / smoothed[:, None]
        self.unused_steps[layer] = torch.where(count > 0, 0, self.unused_steps[layer] + 1)
        if self.dead_steps:
            # no branch on the data (no device sync): the seeds are drawn every step, used where dead
            dead = self.unused_steps[layer] >= self.dead_steps
            seeds = h[torch.randint(h.shape[0], (K,), device=h.device)]
            self.codebook[layer] = torch.where(dead[:, None], seeds, self.codebook[layer])
            self.ema_sum[layer] = torch.where(dead[:, None], seeds, self.ema_sum[layer])
            self.ema_count[layer] = torch.where(dead, 1.0, self.ema_count[layer])
            self.unused_steps[layer] = torch.where(dead, 0, self.unused_steps[layer])
            self.restarts[layer] += dead.sum()

    def snap(self, z, layer):
        """The nearest code vector to each row of z (..., z_dim): how interpolation and analogies
        land back on the codebook."""
        return self.vectors(layer)[self.codes(z, layer)]

    def kl(self, params, layer=None):
        return params.new_full(params.shape[:-1], math.log(self.size), dtype=torch.float32)

    def kl_per_dim(self, params, layer=None):
        return None

    def prior(self, n, device=None, layer=None):
        """Uniform over the layer's codes."""
        return self.vectors(layer)[torch.randint(self.size, (n,), device=device)]

    def expected_z(self, params, layer=None):
        return self.vectors(layer)[self.codes(params, layer)]

    def batch_terms(self, params_list, zs):
        """commitment: sum over layers of the batch mean of |h - sg(e_c)|^2 / z_dim (z holds e_c)."""
        return {"commitment": sum(F.mse_loss(self.project(p), z.detach().float()) for p, z in zip(params_list, zs))}

    @torch.no_grad()
    def usage_metrics(self, params_list):
        """Per layer: codebook perplexity exp(H) of the codes picked over the examples (at most
        min(N, K)), the fraction of the K codes picked at least once, and restarts so far."""
        perplexity, used = [], []
        for j, p in enumerate(params_list):
            counts = torch.bincount(self.codes(p, j), minlength=self.size).double()
            probs = counts[counts > 0] / counts.sum()
            perplexity.append(math.exp(-(probs * probs.log()).sum().item()))
            used.append((counts > 0).float().mean().item())
        return {"codebook": {"perplexity": perplexity, "used_fraction": used, "restarts": self.restarts.tolist()}}


class GaussianMixture(Gaussian):
    """Gaussian posterior, Gaussian-mixture prior with learned components per latent layer (DEM-VAE,
    Shi et al. 2020, "Dispersed Exponential Family Mixture VAEs"); params = [mu | logvar | c_logits].

        p(c) = 1/K (fixed: learned weights let one component take all), p(z|c) = N(m_c, diag(exp(s_c)))
        q(z|x) = N(mu, diag(exp(logvar))), q(c|x) = softmax(c_logits), independent given x

    The KL is that of the joint latent (z, c), analytic (DEM-VAE's ELBO; an upper bound on the KL of
    z alone to the marginal mixture, which has no closed form):

        kl = KL(q(c|x) || p(c)) + sum_c q(c|x) KL(q(z|x) || p(z|c))        = kl_c + sum_d kl_per_dim

    Its z part splits further (DEM-VAE, Sec. 3): with eta_c the natural parameters of p(z|c), A the
    log-partition function, and eta_bar = sum_c q(c|x) eta_c,

        sum_c q(c|x) KL(q(z|x) || p(z|c)) = KL(q(z|x) || p_{eta_bar}) + dispersion
        dispersion = sum_c q(c|x) A(eta_c) - A(eta_bar) >= 0 (A convex), 0 when all components
                     that q(c|x) weighs are equal;
        per dim, with precisions l_c = exp(-s_c), P = sum_c q_c l_c, m_bar = sum_c q_c l_c m_c / P:
        dispersion_d = (sum_c q_c l_c (m_c - m_bar)^2 + log P - sum_c q_c log l_c) / 2

    Minimising the ELBO's dispersion pulls the components together (mode collapse); VAEObjective
    weighs it by --dispersion-weight (DEM-VAE's beta < 1). Likewise the batch mean of kl_c is
    KL(q(c) || p(c)) + I(x; c), q(c) the batch's mean q(c|x), I(x; c) = H(q(c)) - mean_x H(q(c|x))
    (mi_c), weighed by --mi-weight (DEM-VAE's --use_mutual is weight 0)."""

    has_components = True
    collapse_remedies = "--dispersion-weight 0.1, --mi-weight 0, --kl-anneal cyclical, --free-bits 0.5, --word-dropout 0.3, --bow-weight 1"

    @classmethod
    def describe(cls, config):
        return f"{config.mixture_components} components per layer"

    def __init__(self, n_layers, z_dim, components):
        super().__init__(z_dim)
        self.components = components
        self.param_dim = 2 * z_dim + components
        self.prior_mean = nn.Parameter(torch.randn(n_layers, components, z_dim))  # m_c (DEM-VAE: randn)
        self.prior_logvar = nn.Parameter(torch.zeros(n_layers, components, z_dim))  # s_c

    def split(self, params):
        mu, logvar, _ = params.float().split([self.z_dim, self.z_dim, self.components], dim=-1)
        return mu, logvar

    def component_log_probs(self, params):
        """log q(c|x), (..., K)."""
        return F.log_softmax(params[..., 2 * self.z_dim :].float(), dim=-1)

    def kl_per_dim(self, params, layer=None):
        """The z part, sum_c q(c|x) KL(q(z_d|x) || p(z_d|c)), per dim (..., z_dim)."""
        mu, logvar = self.split(params)
        q = self.component_log_probs(params).exp()
        m, s = self.prior_mean[layer].float(), self.prior_logvar[layer].float()  # (K, z_dim)
        per_component = 0.5 * (
            s - logvar[..., None, :] - 1 + (logvar[..., None, :].exp() + (mu[..., None, :] - m) ** 2) * torch.exp(-s)
        )
        return (q[..., None] * per_component).sum(-2)

    def kl_c(self, params):
        """KL(q(c|x) || p(c)) per example."""
        log_q = self.component_log_probs(params)
        return (log_q.exp() * (log_q + math.log(self.components))).sum(-1)

    def kl(self, params, layer=None):
        return self.kl_c(params) + self.kl_per_dim(params, layer).sum(-1)

    def dispersion(self, params, layer):
        """DEM-VAE's dispersion of the components under q(c|x), per example (see the class docstring)."""
        return self.dispersion_per_dim(params, layer).sum(-1)

    def dispersion_per_dim(self, params, layer):
        """The dispersion per dim (..., z_dim): the part of kl_per_dim that pulls the components together."""
        q = self.component_log_probs(params).exp()[..., None]  # (..., K, 1)
        m, s = self.prior_mean[layer].float(), self.prior_logvar[layer].float()
        precision = torch.exp(-s)  # (K, z_dim); sums over K by broadcasting, not matmuls autocast would make bf16
        P = (q * precision).sum(-2)  # (..., z_dim)
        m_bar = (q * precision * m).sum(-2) / P
        spread = (q * precision * (m - m_bar[..., None, :]) ** 2).sum(-2)
        jensen = (torch.log(P) + (q * s).sum(-2)).clamp_min(0)  # log sum q l - sum q log l >= 0; clamp rounding
        return 0.5 * (spread + jensen)

    def prior(self, n, device=None, layer=None, component=None):
        """c ~ p(c) (or the given component), then z ~ N(m_c, diag(exp(s_c))); no gradient."""
        K = self.components
        if component is None:
            c = torch.randint(K, (n,), device=device)
        else:
            if not (isinstance(component, int) and 0 <= component < K):
                raise ValueError(f"component must be an integer in [0, {K - 1}], got {component!r}")
            c = torch.full((n,), component, dtype=torch.long, device=device)
        m, s = self.prior_mean[layer].detach()[c], self.prior_logvar[layer].detach()[c]
        return m + torch.exp(0.5 * s) * torch.randn(n, self.z_dim, device=device)

    def log_prior(self, z, layer=None):
        """log p(z) = logsumexp_c [log p(c) + log N(z; m_c, exp(s_c))] for z (..., z_dim) -> (...)."""
        m, s = self.prior_mean[layer].float(), self.prior_logvar[layer].float()
        log_n = -0.5 * ((z.float()[..., None, :] - m) ** 2 * torch.exp(-s) + s + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_n, dim=-1) - math.log(self.components)

    def component_mi(self, params):
        """I(x; c) over the rows of params (B, param_dim): H(q(c)) - mean_x H(q(c|x)), q(c) = mean_x q(c|x)."""
        log_q = self.component_log_probs(params)  # (B, K)
        log_q_mean = torch.logsumexp(log_q, dim=0) - math.log(log_q.shape[0])  # log q(c)
        return -(log_q_mean.exp() * log_q_mean).sum() + (log_q.exp() * log_q).sum(-1).mean()

    def batch_terms(self, params_list, zs):
        """Batch means: kl_c and mi_c = I(x; c) within the batch, summed over layers; the dispersion per
        layer and dim, (n_latent, z_dim) like kl_per_dim (free bits floor the z part after reweighing it)."""
        kl_c = sum(self.kl_c(p).mean() for p in params_list)
        dispersion = torch.stack([self.dispersion_per_dim(p, j).mean(0) for j, p in enumerate(params_list)])
        mi_c = sum(self.component_mi(p) for p in params_list)
        return {"kl_c": kl_c, "dispersion": dispersion, "mi_c": mi_c}

    @torch.no_grad()
    def usage_metrics(self, params_list):
        """Per layer: usage q(c) = mean_x q(c|x); its entropy (nats, at most log K: low = the sentences
        share few components); I(x; c); the mean dispersion; the spread of the component means (mean
        pairwise distance) next to their mean standard deviation (root mean of exp(s_c))."""
        out = {"usage": [], "usage_entropy": [], "mi_c": [], "dispersion": [], "mean_spread": [], "mean_std": []}
        for j, p in enumerate(params_list):
            usage = self.component_log_probs(p).exp().mean(0)
            out["usage"].append(usage.tolist())
            out["usage_entropy"].append(-(usage * usage.clamp_min(1e-30).log()).sum().item())
            out["mi_c"].append(self.component_mi(p).item())
            out["dispersion"].append(self.dispersion(p, j).mean().item())
            m = self.prior_mean[j].detach().float()
            K = m.shape[0]
            out["mean_spread"].append(torch.pdist(m).mean().item() if K > 1 else 0.0)
            out["mean_std"].append(self.prior_logvar[j].detach().float().exp().mean().sqrt().item())
        return {"mixture": out}


FAMILIES = {"vmf": VMF, "gaussian": Gaussian, "vq": VQ, "gmm": GaussianMixture}


def family_class(name):
    """The family class a config's `latent` names (its class attributes say what the family can do)."""
    if name not in FAMILIES:
        raise ValueError(f"latent family {name!r} is not implemented (choose from {', '.join(FAMILIES)})")
    return FAMILIES[name]


def make_family(config):
    cls = family_class(config.latent)
    if cls is VMF:
        return VMF(config.z_dim, config.kappa)
    if cls is Gaussian:
        return Gaussian(config.z_dim)
    if cls is VQ:
        return VQ(
            config.num_latent_layers,
            config.z_dim,
            config.codebook_size,
            config.vq_distance,
            config.vq_decay,
            config.vq_dead_steps,
        )
    return GaussianMixture(config.num_latent_layers, config.z_dim, config.mixture_components)
