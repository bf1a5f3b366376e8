"""The Alard-Lupton PSF-matching kernel: fit on stamps, apply by FFT, and decorrelate.

A kernel ``K`` that turns the image with the narrower PSF (``N``) into the one with the
wider PSF (``W``), ``W ~ K * N + b``, is a sum of basis functions, Gaussians times
polynomials (Alard & Lupton 1998, ApJ 503, 325; Alard 2000, A&AS 144, 363):

    K(u, v; x, y) = sum_k a_k(x, y) B_k(u, v),   B_k = u^i v^j exp(-(u^2 + v^2) / 2 s^2)

Following the LSST implementation, the first basis function is a unit-sum Gaussian and every
other one is made sum-free, so the kernel's sum (the photometric scaling between the images)
is one coefficient, held constant over the sensor, while the shape coefficients vary as
polynomials of position of degree up to ``spatial_degree`` (cubic by default: the kernel's
width is ``sqrt(s_W^2 - s_N^2)``, which changes much faster than either PSF where the two are
close, and PSF widths change across a sensor in gradients and radial patterns; LSST's default
is quadratic). The degree used is the one of lowest BIC that the stamps support, so a kernel
constant over the sensor keeps degree 0; with too few stamps for that many terms the highest
degree tried is lowered. A polynomial
background of ``background_degree`` absorbs what the background subtraction left. The
coefficients are a linear least-squares fit to stamps around stars, weighted by the inverse
variance, with stamps whose residuals are outliers (variable stars, blends, cosmic rays)
clipped.

The Gaussian widths scale with the width the kernel has to add,
``s_match = sqrt(s_W^2 - s_N^2)``, as LSST's ``alardSigGauss`` scales with the FWHM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy import fft

from twinkles.errors import TwinklesError
from twinkles.geometry import polynomial_terms
from twinkles.image.convolve import kernel_fft
from twinkles.section import Section
from twinkles.stats import mad_std

__all__ = [
    "AlardLuptonConfig",
    "KernelFitError",
    "KernelSolution",
    "decorrelated_variance_factors",
    "decorrelation_kernel",
    "fit_kernel",
    "noise_correlation",
    "sized_for",
]


class KernelFitError(TwinklesError):
    """Too few usable stamps to fit the matching kernel."""


class AlardLuptonConfig(Section):
    """The Alard-Lupton basis and its fit."""

    sigma_factors: list[float] = Field(
        [0.5, 1.0, 2.0, 4.0],
        description="Gaussian widths of the basis, in units of the matching width "
        "sqrt(sigma_wide^2 - sigma_narrow^2) (LSST: 0.7, 1.5, 3.0 px for typical seeing). The "
        "fourth, wider than LSST's, lets the kernel carry the light that PSFs with extended "
        "wings (Moffat, Kolmogorov) move out to twice the FWHM: without it, stars of 17-18 mag "
        "left rings of DIASources there.",
    )
    degrees: list[int] = Field(
        [4, 2, 2, 2],
        description="Polynomial degree multiplying each Gaussian (LSST: 4, 2, 2).",
    )
    min_sigma: float = Field(0.7, gt=0, description="Smallest basis Gaussian width (pixels).")
    kernel_half: int = Field(
        10,
        ge=3,
        le=20,
        description="Kernel half-size (pixels): the kernel is 2 h + 1 square. The smallest: "
        "see kernel_fwhm_scaling.",
    )
    kernel_fwhm_scaling: float = Field(
        4.0,
        ge=0,
        description="The kernel spans at least this many FWHM of the wider PSF, up to "
        "kernel_half_max (as LSST's PSF matching scales its kernel by the FWHM, scaleByFwhm): "
        "the light the kernel must move reaches further in bad seeing, and a kernel too small "
        "takes the wings' light from the core, so that every static source leaves a fraction "
        "of its flux in the difference (the image_difference recipe has the numbers). 0: "
        "always kernel_half.",
    )
    kernel_half_max: int = Field(17, ge=3, le=20, description="Largest kernel half-size (pixels).")
    spatial_degree: int = Field(
        3,
        ge=0,
        le=3,
        description="Highest polynomial degree of the kernel shape's spatial variation; the fit "
        "uses the degree of lowest BIC up to it.",
    )
    background_degree: int = Field(
        0, ge=0, le=2, description="Polynomial degree of the differential background."
    )
    stamp_half: int = Field(
        12, ge=5, le=30, description="Half-size of the fitted region around each star (pixels)."
    )
    clip_sigma: float = Field(
        3.0, gt=0, description="Stamps whose residual chi^2 per pixel is this far out are clipped."
    )
    min_stamps: int = Field(
        3,
        ge=1,
        description="Fewest stamps for a fit; with fewer than three per spatial term the "
        "spatial degree is lowered.",
    )


def sized_for(config: AlardLuptonConfig, fwhm_wide: float) -> AlardLuptonConfig:
    """``config`` with its kernel (and the stamps around it) sized for a wider PSF of FWHM
    ``fwhm_wide`` (pixels): ``kernel_fwhm_scaling`` FWHM across, between ``kernel_half`` and
    ``kernel_half_max``."""
    wanted = int(np.ceil(0.5 * (config.kernel_fwhm_scaling * fwhm_wide - 1.0)))
    half = min(max(config.kernel_half, wanted), max(config.kernel_half_max, config.kernel_half))
    grow = half - config.kernel_half
    return config.model_copy(
        update={"kernel_half": half, "stamp_half": min(config.stamp_half + grow, 30)}
    )


def _basis_1d(sigma: float, power: int, half: int) -> np.ndarray:
    u = np.arange(-half, half + 1, dtype=float)
    return u**power * np.exp(-0.5 * (u / sigma) ** 2)


@dataclass(frozen=True)
class _Basis:
    """The separable basis functions (as 1-D factors) and their sums."""

    factors: list[tuple[np.ndarray, np.ndarray]]  # (g_x, g_y) per function
    sums: np.ndarray

    @classmethod
    def build(cls, config: AlardLuptonConfig, match_sigma: float) -> _Basis:
        half = config.kernel_half
        factors = []
        for factor, degree in zip(config.sigma_factors, config.degrees, strict=True):
            sigma = max(config.min_sigma, factor * match_sigma)
            for d in range(degree + 1):
                for i in range(d, -1, -1):
                    factors.append((_basis_1d(sigma, i, half), _basis_1d(sigma, d - i, half)))
        sums = np.array([gx.sum() * gy.sum() for gx, gy in factors])
        return cls(factors, sums)

    def convolve_stamps(self, cut_outs: np.ndarray, stamp_half: int) -> np.ndarray:
        """Each basis function convolved with each cut-out (n, P, P), on the central
        (2 ``stamp_half`` + 1)^2 pixels, where the kernel lies wholly inside the cut-out
        (``P = 2 (kernel_half + stamp_half) + 1``): shape (n, n_basis, S, S).

        The separable convolutions are matrix products (a Toeplitz matrix per distinct 1-D
        factor), along x once per distinct factor and along y once per basis function.
        """
        k = len(self.factors[0][0])
        size = 2 * stamp_half + 1
        # toeplitz[a, j] = g[j + k - 1 - a]: output pixel j of the central part from input a
        a = np.arange(size + k - 1)[:, None]
        u = np.arange(size)[None, :] + k - 1 - a
        inside = (u >= 0) & (u < k)

        def toeplitz(g: np.ndarray) -> np.ndarray:
            return np.where(inside, g[np.clip(u, 0, k - 1)], 0.0)

        x_index: dict[bytes, int] = {}
        x_mats = []
        for gx, _ in self.factors:
            if gx.tobytes() not in x_index:
                x_index[gx.tobytes()] = len(x_mats)
                x_mats.append(toeplitz(gx))
        along_x = cut_outs @ np.concatenate(x_mats, axis=1)  # (n, P, size * n_x)
        along_x = along_x.reshape(len(cut_outs), size + k - 1, len(x_mats), size)
        out = np.empty((len(cut_outs), len(self.factors), size, size))
        for b, (gx, gy) in enumerate(self.factors):
            out[:, b] = toeplitz(gy).T @ along_x[:, :, x_index[gx.tobytes()], :]
        return out

    def images(self) -> np.ndarray:
        """Basis images (n, size, size): the first unit-sum, the others sum-free."""
        raw = np.array([np.outer(gy, gx) for gx, gy in self.factors])
        out = raw.copy()
        out[0] = raw[0] / self.sums[0]
        out[1:] = raw[1:] - self.sums[1:, None, None] * out[0]
        return out


@dataclass(frozen=True)
class KernelSolution:
    """A fitted matching kernel.

    Attributes
    ----------
    spatial_kernels : ndarray, shape (n_spatial, size, size)
        The kernel is ``sum_m P_m(X, Y) spatial_kernels[m]`` with ``P`` the monomials of
        :func:`~twinkles.geometry.polynomial_terms` at normalised positions.
    spatial_degree : int
    background : ndarray
        Coefficients of the background polynomial (image units).
    background_degree : int
    x0, y0, scale : float
        Position normalisation: ``X = (x - x0) / scale``.
    n_stamps, n_clipped : int
        Stamps used in the final fit, and clipped.
    chi2_per_pixel : float
        Median over the used stamps.
    match_sigma : float
        Width the kernel had to add (pixels).
    """

    spatial_kernels: np.ndarray
    spatial_degree: int
    background: np.ndarray
    background_degree: int
    x0: float
    y0: float
    scale: float
    n_stamps: int
    n_clipped: int
    chi2_per_pixel: float
    match_sigma: float

    def terms(self, x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
        """Polynomial terms of the given degree at pixel positions (x, y), in the solution's
        normalised coordinates.
        """
        return polynomial_terms((x - self.x0) / self.scale, (y - self.y0) / self.scale, degree)

    def kernel(self, x: float, y: float) -> np.ndarray:
        """The kernel at pixel (x, y)."""
        p = self.terms(np.array([x]), np.array([y]), self.spatial_degree)[0]
        return np.tensordot(p, self.spatial_kernels, axes=1)

    def background_image(self, shape: tuple[int, int]) -> np.ndarray:
        """The fitted differential background (electrons per pixel) over an image of ``shape``."""
        h, w = shape
        if self.background_degree == 0:
            return np.full(shape, self.background[0], dtype=np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        t = self.terms(xx.ravel().astype(float), yy.ravel().astype(float), self.background_degree)
        return (t @ self.background).reshape(shape).astype(np.float32)


def fit_kernel(
    narrow: np.ndarray,
    wide: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    sigma_narrow: float,
    sigma_wide: float,
    config: AlardLuptonConfig | None = None,
    bad: np.ndarray | None = None,
) -> KernelSolution:
    """Fit ``wide ~ K * narrow + background`` on stamps centred on (x, y).

    Parameters
    ----------
    narrow, wide : ndarray
        The two images on the same pixel grid (same units).
    variance : ndarray
        Per-pixel variance of ``wide - K * narrow`` (the sum of both images' variances is
        adequate: the kernel's sum is near 1).
    x, y : array
        Stamp centres (0-based pixels): stars, bright and unsaturated.
    sigma_narrow, sigma_wide : float
        Gaussian-equivalent PSF widths (pixels) of the two images; they set the basis widths.
    config : AlardLuptonConfig
    bad : ndarray of bool, optional
        Pixels to leave out (masked, no data).

    Returns
    -------
    KernelSolution

    Raises
    ------
    KernelFitError
        Fewer than ``min_stamps`` stamps fit on the image and are usable.
    """
    cfg = config or AlardLuptonConfig()
    match_sigma = float(np.sqrt(max(sigma_wide**2 - sigma_narrow**2, cfg.min_sigma**2)))
    basis = _Basis.build(cfg, match_sigma)
    h, w = wide.shape
    kh, sh = cfg.kernel_half, cfg.stamp_half
    pad = kh + sh
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix >= pad) & (ix < w - pad) & (iy >= pad) & (iy < h - pad)
    ix, iy = ix[inside], iy[inside]
    scale = 0.5 * max(h, w)
    x0, y0 = 0.5 * (w - 1), 0.5 * (h - 1)
    n_basis = len(basis.factors)
    n_bg = (cfg.background_degree + 1) * (cfg.background_degree + 2) // 2

    stamps = []  # (target, weights, normalised position) of each usable stamp
    cut_outs = []  # the narrow image around it, for the basis convolutions
    for cx, cy in zip(ix, iy, strict=True):
        big = narrow[cy - pad : cy + pad + 1, cx - pad : cx + pad + 1].astype(float)
        tgt = wide[cy - sh : cy + sh + 1, cx - sh : cx + sh + 1].astype(float)
        var = variance[cy - sh : cy + sh + 1, cx - sh : cx + sh + 1].astype(float)
        ok = np.isfinite(tgt) & np.isfinite(var) & (var > 0) & np.all(np.isfinite(big))
        if bad is not None:
            ok &= ~bad[cy - sh : cy + sh + 1, cx - sh : cx + sh + 1]
        if ok.mean() < 0.9:
            continue
        cut_outs.append(big)
        weight = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0).ravel()
        stamps.append(
            (np.where(ok, tgt, 0.0).ravel(), weight, (cx - x0) / scale, (cy - y0) / scale)
        )
    n_total = len(stamps)
    if n_total < max(cfg.min_stamps, 1):
        raise KernelFitError(
            f"only {n_total} usable star stamps for the matching kernel "
            f"(need {cfg.min_stamps}); too few reference stars on the image"
        )
    convolved = basis.convolve_stamps(np.array(cut_outs), sh)
    convolved[:, 0] /= basis.sums[0]
    convolved[:, 1:] -= basis.sums[1:, None, None] * convolved[:, :1]
    # a spatial variation needs stars spread over the sensor: a few per spatial term
    spatial_degree = cfg.spatial_degree
    while spatial_degree > 0 and n_total < 3 * (spatial_degree + 1) * (spatial_degree + 2) // 2:
        spatial_degree -= 1
    n_spatial = (spatial_degree + 1) * (spatial_degree + 2) // 2
    n_par = 1 + (n_basis - 1) * n_spatial + n_bg
    # Every column of a stamp's design matrix is one of the stamp's n_basis + 1 rows (its basis
    # convolutions and a constant) times a number fixed for the stamp, factor[s, row, m] (the
    # spatial or background monomial m at the stamp). So the normal equations follow from each
    # stamp's small Gram matrix of its rows, and the full design (pixels x n_par) is never
    # built: ~(n_par / (n_basis + 1))^2 fewer operations than design.T @ W @ design. The
    # coefficients are (row 0, m 0), (rows 1 .. n_basis - 1, every spatial m), (the constant
    # row, every background m): `param` indexes them in the flattened (row, m) grid.
    n_terms = max(n_spatial, n_bg)
    param = np.array(
        [0]
        + [k * n_terms + m for k in range(1, n_basis) for m in range(n_spatial)]
        + [n_basis * n_terms + m for m in range(n_bg)]
    )
    source = param // n_terms
    rows, targets, weights = [], [], []
    grams = np.empty((n_total, n_basis + 1, n_basis + 1))
    projections = np.empty((n_total, n_basis + 1))
    factor = np.zeros((n_total, n_basis + 1, n_terms))
    for k, (conv, (tgt, weight, X, Y)) in enumerate(zip(convolved, stamps, strict=True)):
        factor[k, 0, 0] = 1.0
        factor[k, 1:n_basis, :n_spatial] = polynomial_terms(
            np.array([X]), np.array([Y]), spatial_degree
        )[0]
        factor[k, n_basis, :n_bg] = polynomial_terms(
            np.array([X]), np.array([Y]), cfg.background_degree
        )[0]
        row = np.vstack([conv.reshape(n_basis, -1), np.ones((1, tgt.size))])
        weighted = row * weight
        rows.append(row)
        grams[k] = weighted @ row.T
        projections[k] = weighted @ tgt
        targets.append(tgt)
        weights.append(weight)
    factors = factor.reshape(n_total, -1)[:, param]

    def stamp_chi2(coef: np.ndarray) -> np.ndarray:
        """Each stamp's chi^2 per usable pixel."""
        out = np.empty(n_total)
        for k in range(n_total):
            row_coef = np.bincount(source, weights=factors[k] * coef, minlength=n_basis + 1)
            residual = targets[k] - row_coef @ rows[k]
            out[k] = np.sum(weights[k] * residual**2) / max(np.count_nonzero(weights[k]), 1)
        return out

    use = np.ones(n_total, dtype=bool)
    for _ in range(3):
        fitted = use  # the stamps of these normal equations
        f, g = factor[fitted], grams[fitted]
        full = np.einsum("sam,sbn,sab->ambn", f, f, g, optimize=True)
        full = full.reshape((n_basis + 1) * n_terms, (n_basis + 1) * n_terms)
        ata = full[np.ix_(param, param)]
        atb = np.einsum("sam,sa->am", f, projections[fitted]).ravel()[param]
        coef = np.linalg.lstsq(ata, atb, rcond=None)[0]
        chi2 = stamp_chi2(coef)
        med = np.median(chi2[use])
        spread = mad_std(chi2[use], med) + 1e-3 * med
        new_use = chi2 < med + cfg.clip_sigma * spread
        if np.array_equal(new_use, use) or new_use.sum() < cfg.min_stamps:
            break
        use = new_use
    # the spatial degree the stamps support: the one of lowest BIC (from the normal equations
    # of the last fit, a block per degree), so that a kernel constant over the sensor is not
    # given the noise of 26 x 10 cubic terms to follow
    y_wy = sum(float(np.sum(weights[k] * targets[k] ** 2)) for k in np.flatnonzero(fitted))
    n_data = sum(np.count_nonzero(weights[k]) for k in np.flatnonzero(fitted))
    best = None
    for degree in range(spatial_degree + 1):
        n_terms = (degree + 1) * (degree + 2) // 2
        idx = np.array(
            [0]
            + [1 + (k - 1) * n_spatial + m for k in range(1, n_basis) for m in range(n_terms)]
            + list(range(n_par - n_bg, n_par)),
            dtype=int,
        )
        sub = np.linalg.lstsq(ata[np.ix_(idx, idx)], atb[idx], rcond=None)[0]
        bic = y_wy - float(sub @ atb[idx]) + len(idx) * np.log(max(n_data, 2))
        if best is None or bic < best[0]:
            best = (bic, degree, idx, sub)
    _, chosen, idx, sub = best
    if chosen < spatial_degree:
        coef = np.zeros(n_par)
        coef[idx] = sub
        chi2 = stamp_chi2(coef)
    images = basis.images()
    n_chosen = (chosen + 1) * (chosen + 2) // 2
    spatial = np.zeros((n_chosen, *images.shape[1:]))
    spatial[0] += coef[0] * images[0]
    for k in range(1, n_basis):
        for m in range(n_chosen):
            spatial[m] += coef[1 + (k - 1) * n_spatial + m] * images[k]
    return KernelSolution(
        spatial_kernels=spatial,
        spatial_degree=chosen,
        background=coef[n_par - n_bg :],
        background_degree=cfg.background_degree,
        x0=x0,
        y0=y0,
        scale=scale,
        n_stamps=int(use.sum()),
        n_clipped=int(n_total - use.sum()),
        chi2_per_pixel=float(np.median(chi2[use])),
        match_sigma=match_sigma,
    )


def noise_correlation(
    image: np.ndarray,
    variance: np.ndarray,
    usable: np.ndarray,
    half: int = 6,
    max_side: int = 1024,
    clip: float = 4.0,
) -> np.ndarray:
    """The noise's normalised autocorrelation, measured on an image's blank pixels.

    ``z = image / sqrt(variance)`` on ``usable`` pixels (those not usable, or beyond ``clip``,
    count as missing) gives ``rho(d) = <z(x) z(x + d)> / <z^2>`` for lags ``|d| <= half``,
    averaged over the pairs present (masked FFTs; a central ``max_side`` square is enough and
    bounds the cost). White noise gives 1 at zero lag and 0 elsewhere; resampling and
    PSF homogenisation spread it: ``sum(rho)`` is then the factor by which the variance of a
    large-scale (low-frequency) measurement exceeds the per-pixel variance's prediction.

    Returns
    -------
    ndarray, shape (2 half + 1, 2 half + 1)
        ``rho``, 1 at the centre; the unit impulse if too few pixels are usable.
    """
    h, w = image.shape
    y0, x0 = max((h - max_side) // 2, 0), max((w - max_side) // 2, 0)
    box = (slice(y0, y0 + min(h, max_side)), slice(x0, x0 + min(w, max_side)))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = image[box] / np.sqrt(variance[box])
    good = usable[box] & np.isfinite(z)
    good &= np.abs(z) < clip
    impulse = np.zeros((2 * half + 1, 2 * half + 1))
    impulse[half, half] = 1.0
    if good.sum() < 100 * impulse.size:
        return impulse
    z = np.where(good, z - np.mean(z[good]), 0.0)
    m = good.astype(float)
    shape = (z.shape[0] + half, z.shape[1] + half)  # zero padding: no wrapped pairs
    zf, mf = fft.rfft2(z, s=shape), fft.rfft2(m, s=shape)
    sums = fft.irfft2(zf * np.conj(zf), s=shape)
    pairs = fft.irfft2(mf * np.conj(mf), s=shape)
    lags = np.r_[-half : half + 1]
    sums = sums[np.ix_(lags, lags)]
    pairs = np.maximum(pairs[np.ix_(lags, lags)], 1.0)
    rho = sums / pairs
    return rho / rho[half, half]


def _correlation_power(corr: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | float:
    """Noise power spectrum (rfft2 grid of ``shape``) of unit-variance noise with ``corr``."""
    if corr is None:
        return 1.0
    power = np.real(kernel_fft(corr, shape))
    # a measured correlation is truncated and noisy: keep the spectrum positive
    return np.maximum(power, 1e-3 * power.max())


def decorrelation_kernel(
    matching_kernel: np.ndarray,
    var_wide: float,
    var_narrow: float,
    size: int = 25,
    corr_wide: np.ndarray | None = None,
    corr_narrow: np.ndarray | None = None,
    taper: bool = False,
) -> np.ndarray:
    """The real-space kernel that whitens ``wide - K * narrow`` (Reiss & Lupton 2016, DMTN-021).

    In Fourier space, with ``K`` normalised to unit sum and ``R_W``, ``R_N`` the power spectra
    of the inputs' noise per unit variance (1 for white noise, the transform of
    :func:`noise_correlation` for a resampled, PSF-homogenised template),

        psi(k) = sqrt((s_W^2 R_W(0) + s_N^2 R_N(0)) / (s_W^2 R_W(k) + s_N^2 R_N(k) |K(k)|^2))

    After it the difference's noise is white with variance ``s_W^2 R_W(0) + s_N^2 R_N(0)``
    (``R(0) = sum(corr)``), and its PSF is the wide image's convolved with ``psi``. With white
    inputs this is DMTN-021's kernel.

    Where the wide image is much the less noisy, ``psi`` sharpens high frequencies by up to
    ``sqrt(1 + s_N^2 / s_W^2)`` and rings far beyond ``size``; cut there, the ring's edge
    makes echoes of every bright source half a kernel away. With ``taper`` the kernel is
    multiplied by a radial Hann window over ``size`` before it is normalised: it whitens less
    of the longest-range correlation, which the measured PSF-flux spread then accounts for.
    """
    n = max(size, 2 * matching_kernel.shape[0] + 1) * 2 + 1
    k = matching_kernel / matching_kernel.sum()
    kf = kernel_fft(k, (n, n))
    power_w = _correlation_power(corr_wide, (n, n))
    power_n = _correlation_power(corr_narrow, (n, n))
    zero_w = 1.0 if corr_wide is None else float(corr_wide.sum())
    zero_n = 1.0 if corr_narrow is None else float(corr_narrow.sum())
    psi = np.sqrt(
        (var_wide * zero_w + var_narrow * zero_n)
        / (var_wide * power_w + var_narrow * power_n * np.abs(kf) ** 2)
    )
    real = np.fft.fftshift(fft.irfft2(psi, s=(n, n)))
    c = n // 2
    half = size // 2
    out = real[c - half : c + half + 1, c - half : c + half + 1]
    if taper:
        u = np.arange(-half, half + 1)
        r = np.hypot(u[:, None], u[None, :]) / (half + 1)
        out = out * np.where(r < 1.0, 0.5 * (1.0 + np.cos(np.pi * r)), 0.0)
    return out / out.sum()


def decorrelated_variance_factors(
    psi: np.ndarray,
    matching_kernel: np.ndarray,
    corr_wide: np.ndarray | None = None,
    corr_narrow: np.ndarray | None = None,
) -> tuple[float, float]:
    """Per-pixel variance of ``psi * (wide - K * narrow)`` per unit variance of each input.

    The noise power after the decorrelation is ``|psi(k)|^2 (s_W^2 R_W(k) + s_N^2 R_N(k)
    |K(k)|^2)``; its mean over frequencies is the per-pixel variance, ``a_W s_W^2 + a_N s_N^2``
    with ``a_W = <|psi|^2 R_W>`` and ``a_N = <|psi|^2 R_N |K|^2>`` (``K`` at unit sum). Exact
    for stationary noise whatever ``psi`` is (cropped, or derived for white inputs when one
    is not).
    """
    n = max(psi.shape[0], matching_kernel.shape[0], 25) * 4 + 1  # odd: no Nyquist column
    k = matching_kernel / matching_kernel.sum()
    psi_power = np.abs(kernel_fft(psi, (n, n))) ** 2
    k_power = np.abs(kernel_fft(k, (n, n))) ** 2
    power_w = _correlation_power(corr_wide, (n, n))
    power_n = _correlation_power(corr_narrow, (n, n))
    # mean over the full frequency plane from the half plane of rfft2: every column but the
    # first stands for two frequencies
    weight = np.full(psi_power.shape[1], 2.0)
    weight[0] = 1.0
    total = n * n

    def mean(spectrum: np.ndarray) -> float:
        return float(np.sum(np.broadcast_to(spectrum, psi_power.shape) * weight) / total)

    return mean(psi_power * power_w), mean(psi_power * power_n * k_power)
