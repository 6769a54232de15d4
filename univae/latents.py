"""Latent families for the [CLS] bottleneck.

A family turns the projected [CLS] vector of one latent layer ("params", `param_dim` wide) into a
code z (`z_dim` wide). Every family has the same small interface:

    mean(params)          deterministic code (posterior mean direction / mean)
    sample(params)        reparameterised posterior sample
    kl(params)            KL(q(z|x) || p(z)) per example, shape (B,)
    kl_per_dim(params)    the same KL split over dims, (B, z_dim), or None where it does not split (vMF)
    kl_is_constant        True when kl does not depend on params (fixed-kappa vMF): nothing to optimise
    prior(n, device)      n draws from the prior, (n, z_dim)
    log_q(z, params)      log q(z|x); broadcasts, so z (M, 1, k) against params (1, N, p) gives (M, N)
    expected_z(params)    E_q[z] per example (for active units)

The diagnostics (kl_per_dim, log_q, expected_z) compute in float32 whatever the dtype of
params (autocast hands them bf16).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def log_bessel_iv(nu, x):
    """log I_nu(x) for nu >= 0, x > 0 from the power series, in float64 Python.

    sum_m (x/2)^(2m+nu) / (m! Gamma(m+nu+1)); the terms peak near m ~ x/2, so summing well past
    x terms in log space is exact to double precision for the kappas used here (up to ~10^4).
    """
    if x <= 0:
        raise ValueError(f"x must be positive, got {x}")
    n_terms = int(x + 10 * math.sqrt(x) + 50)
    logs = [(2 * m + nu) * math.log(x / 2) - math.lgamma(m + 1) - math.lgamma(m + nu + 1) for m in range(n_terms)]
    top = max(logs)
    return top + math.log(sum(math.exp(t - top) for t in logs))


def vmf_mean_cosine(kappa, d):
    """E[mu . z] for z ~ vMF(mu, kappa) on S^{d-1}: A_d(kappa) = I_{d/2}(kappa) / I_{d/2-1}(kappa)."""
    return math.exp(log_bessel_iv(d / 2, kappa) - log_bessel_iv(d / 2 - 1, kappa))


def vmf_log_normalizer(kappa, d):
    """log C_d(kappa), the vMF density being C_d(kappa) exp(kappa mu.z) w.r.t. surface measure."""
    return (d / 2 - 1) * math.log(kappa) - (d / 2) * math.log(2 * math.pi) - log_bessel_iv(d / 2 - 1, kappa)


def vmf_kl_uniform(kappa, d):
    """KL(vMF(kappa) || uniform on S^{d-1}) in nats; the same for every mu (≈7.58 at kappa=32, d=16)."""
    log_area = math.log(2) + (d / 2) * math.log(math.pi) - math.lgamma(d / 2)
    return kappa * vmf_mean_cosine(kappa, d) + vmf_log_normalizer(kappa, d) + log_area


class VMF(nn.Module):
    """von Mises-Fisher posterior with fixed kappa, uniform prior on the sphere (the reference).

    The cosine w = mu.z has density ∝ exp(kappa w) (1 - w^2)^((d-3)/2) on [-1, 1], independent of
    mu. We tabulate its CDF once and sample w by inverse-CDF interpolation (as the reference does),
    then z = w mu + sqrt(1 - w^2) nu with nu a uniform unit vector orthogonal to mu. Because w does
    not depend on mu, gradients reach mu through this expression: the sample is reparameterised.
    """

    def __init__(self, z_dim, kappa, grid=1 << 16):
        super().__init__()
        self.z_dim, self.kappa = z_dim, float(kappa)
        self.param_dim = z_dim
        w = torch.linspace(-1, 1, grid + 2, dtype=torch.float64)[1:-1]
        log_p = self.kappa * w + (z_dim - 3) / 2 * torch.log1p(-w * w)
        cdf = torch.cumsum(torch.exp(log_p - log_p.max()), 0)
        cdf = torch.cat([cdf.new_zeros(1), cdf / cdf[-1]])
        w = torch.cat([w.new_full((1,), -1.0), w])
        self.register_buffer("cdf", cdf.float(), persistent=False)
        self.register_buffer("w_grid", w.float(), persistent=False)
        self.kl_const = vmf_kl_uniform(self.kappa, z_dim)
        self.log_norm = vmf_log_normalizer(self.kappa, z_dim)

    def mean(self, params):
        return F.normalize(params, dim=-1)

    def sample_cosine(self, shape, device):
        """w = mu.z for vMF samples, by inverse-CDF interpolation of the tabulated CDF."""
        u = torch.rand(shape, device=device)
        hi = torch.searchsorted(self.cdf, u).clamp(1, self.cdf.numel() - 1)
        c0, c1 = self.cdf[hi - 1], self.cdf[hi]
        t = ((u - c0) / (c1 - c0).clamp_min(1e-12)).clamp(0, 1)
        return torch.lerp(self.w_grid[hi - 1], self.w_grid[hi], t)

    def sample(self, params):
        mu = self.mean(params)
        w = self.sample_cosine(mu.shape[:-1] + (1,), mu.device).to(mu.dtype)
        eps = torch.randn_like(mu)
        nu = F.normalize(eps - (eps * mu).sum(-1, keepdim=True) * mu, dim=-1)
        return w * mu + torch.sqrt(1 - w * w) * nu

    kl_is_constant = True

    def kl(self, params):
        return params.new_full(params.shape[:-1], self.kl_const)

    def kl_per_dim(self, params):
        return None  # the KL to the uniform prior is a property of the whole sphere, not of coordinates

    def prior(self, n, device=None):
        return F.normalize(torch.randn(n, self.z_dim, device=device), dim=-1)

    def log_q(self, z, params):
        return self.log_norm + self.kappa * (z.float() * self.mean(params.float())).sum(-1)

    def expected_z(self, params):
        # E[z] = E[w] mu: the perpendicular part averages out over the sub-sphere
        return vmf_mean_cosine(self.kappa, self.z_dim) * self.mean(params.float())


class Gaussian(nn.Module):
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

    def mean(self, params):
        return params[..., : self.z_dim]

    def sample(self, params):
        mu, logvar = self.split(params)
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def kl_per_dim(self, params):
        """KL(N(mu, s^2) || N(0, 1)) per dim = (mu^2 + s^2 - 1 - log s^2) / 2, (..., z_dim)."""
        mu, logvar = self.split(params)
        return 0.5 * (mu * mu + logvar.exp() - 1 - logvar)

    def kl(self, params):
        return self.kl_per_dim(params).sum(-1)

    def prior(self, n, device=None):
        return torch.randn(n, self.z_dim, device=device)

    def log_q(self, z, params):
        mu, logvar = self.split(params)
        return -0.5 * ((z.float() - mu) ** 2 * torch.exp(-logvar) + logvar + math.log(2 * math.pi)).sum(-1)

    def expected_z(self, params):
        return self.split(params)[0]


def make_family(config):
    if config.latent == "vmf":
        return VMF(config.z_dim, config.kappa)
    if config.latent == "gaussian":
        return Gaussian(config.z_dim)
    raise ValueError(f"latent family {config.latent!r} is not implemented")
