"""The von Mises-Fisher distribution's math under the vMF latent family (univae.latents.VMF): the
modified Bessel function I_nu, the normaliser C_d(kappa), the mean cosine A_d(kappa), the KL to the
uniform distribution on the sphere, the sphere's area (float64 Python: constants of a fixed kappa,
computed once), and the tabulated CDF of the cosine w = mu.z from which VMF draws by inverse-CDF
interpolation.
"""

import math

import torch


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


def log_sphere_area(d):
    """log of the surface area of the unit sphere S^{d-1} in R^d: log(2 pi^(d/2) / Gamma(d/2))."""
    return math.log(2) + (d / 2) * math.log(math.pi) - math.lgamma(d / 2)


def vmf_kl_uniform(kappa, d):
    """KL(vMF(kappa) || uniform on S^{d-1}) in nats; the same for every mu (≈7.58 at kappa=32, d=16)."""
    return kappa * vmf_mean_cosine(kappa, d) + vmf_log_normalizer(kappa, d) + log_sphere_area(d)


def vmf_cosine_cdf(kappas, d, grid):
    """The CDF of the cosine w = mu.z for z ~ vMF(mu, kappa) on S^{d-1}, one row per kappa, for inverse_cdf:
    w has density ∝ exp(kappa w) (1 - w^2)^((d-3)/2) on [-1, 1], whatever mu. -> (w, cdfs) in float64:
    w (grid + 1,) is -1 then `grid` points inside (-1, 1); cdfs (len(kappas), grid + 1) start at 0."""
    w = torch.linspace(-1, 1, grid + 2, dtype=torch.float64)[1:-1]
    cdfs = []
    for k in kappas:
        log_p = k * w + (d - 3) / 2 * torch.log1p(-w * w)
        cdf = torch.cumsum(torch.exp(log_p - log_p.max()), 0)
        cdfs.append(torch.cat([cdf.new_zeros(1), cdf / cdf[-1]]))
    w = torch.cat([w.new_full((1,), -1.0), w])
    return w, torch.stack(cdfs)


def inverse_cdf(cdf, grid, u):
    """Draws from a tabulated distribution: for each uniform u in [0, 1], the point of `grid` where `cdf`
    (its values there, increasing) reaches u, interpolated linearly between grid points."""
    hi = torch.searchsorted(cdf, u).clamp(1, cdf.numel() - 1)
    c0, c1 = cdf[hi - 1], cdf[hi]
    t = ((u - c0) / (c1 - c0).clamp_min(1e-12)).clamp(0, 1)
    return torch.lerp(grid[hi - 1], grid[hi], t)
