"""Strongly lensed quasars: image positions, magnifications, time delays and variability.

After the OM10 mock (Oguri & Marshall 2010) that Twinkles used: a lens galaxy at ``z_l``, a
quasar at ``z_s``, two or four images.

* **Lens.** Singular isothermal sphere with external shear (SIS + gamma, rms 0.05): potential
  ``psi(theta) = theta_E |theta| + (gamma1 (x^2 - y^2) + 2 gamma2 x y) / 2``. Sources inside
  the astroid caustic make four images, the others two. Images are found by scanning the
  polar angle for roots of the lens equation (exact to 1e-10 arcsec after refinement).
* **Magnification** ``mu = 1 / det(A)`` with
  ``A = I - Gamma - theta_E / r (I - u u^T)``; negative for saddle-point images.
* **Time delays** from the Fermat potential
  ``tau = (1 + z_l) D_l D_s / (c D_ls) (|theta - beta|^2 / 2 - psi(theta))``, in the same
  cosmology as the supernovae. Delays are counted from the first image to arrive.
* **Variability.** The quasar varies as a damped random walk (Kelly et al. 2009;
  MacLeod et al. 2010): an Ornstein-Uhlenbeck process with rest-frame time scale ~200 d and
  asymptotic structure function ~0.2 mag in i, larger in the blue (``~lambda^-0.5``), simulated
  exactly on a 1-day grid and interpolated linearly. Every image shows the same curve,
  delayed by its time delay and scaled by its magnification; no microlensing (as Twinkles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy import constants, units
from astropy.table import Table

from twinkles.bands import BANDS
from twinkles.config import TruthConfig
from twinkles.geometry import random_positions_in_disc
from twinkles.sim.bands import LSST_BANDS
from twinkles.sim.galaxies import galaxy_table
from twinkles.sim.ids import ObjectKind, make_ids
from twinkles.sim.supernovae import cosmology
from twinkles.units import mag_to_njy

__all__ = [
    "LensImages",
    "SISShearLens",
    "damped_random_walk",
    "lensed_image_flux",
    "make_lensed_quasars",
    "time_delay_distance_days",
]

ARCSEC = np.pi / 180.0 / 3600.0
#: Quasar colours relative to i (m_band - m_i) at z ~ 2.
_QUASAR_MINUS_I = np.array([0.35, 0.2, 0.1, 0.0, -0.05, -0.1])
#: DRW amplitude relative to i.
DRW_AMPLITUDE = {
    b: (LSST_BANDS[b].wavelength_eff / LSST_BANDS["i"].wavelength_eff) ** -0.5 for b in BANDS
}
_DRW_STEP_DAYS = 1.0


@dataclass(frozen=True)
class LensImages:
    """Images of one source: positions (arcsec, relative to the lens), magnifications, and
    Fermat potentials (arcsec^2)."""

    x: np.ndarray
    y: np.ndarray
    magnification: np.ndarray
    fermat: np.ndarray


@dataclass(frozen=True)
class SISShearLens:
    """Singular isothermal sphere plus external shear.

    Parameters
    ----------
    theta_e : float
        Einstein radius (arcsec).
    gamma1, gamma2 : float
        External shear components.
    """

    theta_e: float
    gamma1: float = 0.0
    gamma2: float = 0.0

    def __post_init__(self) -> None:
        if self.theta_e <= 0:
            raise ValueError(f"theta_e must be positive, got {self.theta_e}")
        if np.hypot(self.gamma1, self.gamma2) >= 1:
            raise ValueError("shear |gamma| must be below 1")

    def deflected(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source-plane position beta of image-plane position theta (arcsec)."""
        r = np.hypot(x, y)
        bx = x - self.theta_e * x / r - (self.gamma1 * x + self.gamma2 * y)
        by = y - self.theta_e * y / r - (self.gamma2 * x - self.gamma1 * y)
        return bx, by

    def potential(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Lens potential psi (arcsec^2)."""
        return self.theta_e * np.hypot(x, y) + 0.5 * (
            self.gamma1 * (x**2 - y**2) + 2.0 * self.gamma2 * x * y
        )

    def magnification(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed magnification at image-plane position (arcsec)."""
        r = np.hypot(x, y)
        ux, uy = x / r, y / r
        k = self.theta_e / r
        a11 = 1.0 - self.gamma1 - k * (1.0 - ux * ux)
        a22 = 1.0 + self.gamma1 - k * (1.0 - uy * uy)
        a12 = -self.gamma2 + k * ux * uy
        return 1.0 / (a11 * a22 - a12 * a12)

    def images(self, beta_x: float, beta_y: float, n_angles: int = 7200) -> LensImages:
        """Solve the lens equation for a source at (beta_x, beta_y) arcsec."""
        if self.gamma1 == 0 and self.gamma2 == 0:
            return self._sis_images(beta_x, beta_y)
        # A theta = beta + theta_E u with A = I - Gamma and u = theta / |theta|: for each
        # direction u(phi), theta(phi) = A^-1 (beta + theta_E u); images are the directions
        # where theta(phi) points along u. The test function has no poles.
        a_inv = np.linalg.inv(
            np.array([[1.0 - self.gamma1, -self.gamma2], [-self.gamma2, 1.0 + self.gamma1]])
        )

        def theta(phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rhs_x = beta_x + self.theta_e * np.cos(phi)
            rhs_y = beta_y + self.theta_e * np.sin(phi)
            return a_inv[0, 0] * rhs_x + a_inv[0, 1] * rhs_y, a_inv[1, 0] * rhs_x + a_inv[
                1, 1
            ] * rhs_y

        def misalignment(phi: np.ndarray) -> np.ndarray:
            tx, ty = theta(phi)
            return tx * np.sin(phi) - ty * np.cos(phi)

        phi = np.linspace(0.0, 2 * np.pi, n_angles + 1)
        g = misalignment(phi)
        roots = []
        for i in np.flatnonzero(np.sign(g[:-1]) != np.sign(g[1:])):
            lo, hi, glo = phi[i], phi[i + 1], g[i]
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                gm = misalignment(np.array([mid]))[0]
                if np.sign(gm) == np.sign(glo):
                    lo, glo = mid, gm
                else:
                    hi = mid
            root = 0.5 * (lo + hi)
            tx, ty = theta(np.array([root]))
            if tx[0] * np.cos(root) + ty[0] * np.sin(root) > 0:  # theta along +u, not -u
                roots.append((tx[0], ty[0]))
        x = np.array([r[0] for r in roots])
        y = np.array([r[1] for r in roots])
        fermat = 0.5 * ((x - beta_x) ** 2 + (y - beta_y) ** 2) - self.potential(x, y)
        return LensImages(x=x, y=y, magnification=self.magnification(x, y), fermat=fermat)

    def _sis_images(self, beta_x: float, beta_y: float) -> LensImages:
        """Without shear: images on the line through the source, at |beta| +- theta_E."""
        b = float(np.hypot(beta_x, beta_y))
        if b == 0:
            raise ValueError("a source on the optical axis of an SIS makes an Einstein ring")
        ux, uy = beta_x / b, beta_y / b
        radii = [b + self.theta_e] + ([b - self.theta_e] if b < self.theta_e else [])
        x = np.array([rad * ux for rad in radii])
        y = np.array([rad * uy for rad in radii])
        fermat = 0.5 * ((x - beta_x) ** 2 + (y - beta_y) ** 2) - self.potential(x, y)
        return LensImages(x=x, y=y, magnification=self.magnification(x, y), fermat=fermat)


def time_delay_distance_days(z_lens: float, z_source: float) -> float:
    """``(1 + z_l) D_l D_s / (c D_ls)`` in days per arcsec^2 of Fermat potential."""
    d_l = cosmology().angular_diameter_distance(z_lens)
    d_s = cosmology().angular_diameter_distance(z_source)
    d_ls = cosmology().angular_diameter_distance(z_lens, z_source)
    seconds = ((1.0 + z_lens) * d_l * d_s / (constants.c * d_ls)).to(units.s).value
    return float(seconds * ARCSEC**2 / 86400.0)


def damped_random_walk(
    n_steps: int, step: float, tau: float, sf_inf: float, rng: np.random.Generator
) -> np.ndarray:
    """Exact Ornstein-Uhlenbeck realisation on a regular grid, stationary from the start.

    Parameters
    ----------
    n_steps : int
        Number of grid points.
    step : float
        Grid spacing (d).
    tau : float
        Damping time scale (observer frame, d).
    sf_inf : float
        Asymptotic structure function (mag); the process variance is ``sf_inf^2 / 2``.
    """
    sigma = sf_inf / np.sqrt(2.0)
    decay = np.exp(-step / tau)
    kicks = sigma * np.sqrt(1.0 - decay**2) * rng.standard_normal(n_steps)
    kicks[0] = sigma * rng.standard_normal()  # start from the stationary distribution
    # x[k] = decay * x[k-1] + kick[k]; scipy.signal is imported here, where the sky is made
    # once per run: at module level it cost every warm kernel ~0.3-0.6 s of start-up
    from scipy.signal import lfilter

    return lfilter([1.0], [1.0, -decay], kicks)


def make_lensed_quasars(
    config: TruthConfig,
    n: int,
    ra0: float,
    dec0: float,
    placement_radius_deg: float,
    mjd_range: tuple[float, float],
    galaxy_id_start: int,
    rng: np.random.Generator,
) -> tuple[Table, Table, Table, Table]:
    """``n`` lensed-quasar systems.

    Returns
    -------
    systems, images, variability, lens_galaxies : Table
        One row per system; per image; the DRW grid of each system (``mjd``, ``dmag_i``);
        and the lens galaxies as galaxy truth rows (``is_lens`` True).
    """
    ra, dec = random_positions_in_disc(n, ra0, dec0, placement_radius_deg, rng)
    sys_ids = make_ids(ObjectKind.LENS_SYSTEM, n)
    systems, image_rows, var_rows = [], [], []
    t_lo, t_hi = mjd_range
    for k in range(n):
        z_l = rng.uniform(0.3, 0.8)
        z_s = rng.uniform(1.5, 3.0)
        theta_e = np.exp(
            rng.uniform(np.log(config.lens_theta_e_min), np.log(config.lens_theta_e_max))
        )
        g1, g2 = rng.normal(0.0, 0.05, 2)
        lens = SISShearLens(theta_e, g1, g2)
        # sources uniform in a disc of 0.9 theta_E (always 2 images), except that a quarter
        # are drawn inside the astroid caustic (4 images): the magnification bias that makes
        # ~15% of OM10's observable lenses quads
        inside_caustic = 1.5 * np.hypot(g1, g2) * theta_e
        radius = inside_caustic if rng.random() < 0.25 else 0.9 * theta_e
        b = radius * np.sqrt(rng.random())
        ang = rng.uniform(0, 2 * np.pi)
        imgs = lens.images(b * np.cos(ang), b * np.sin(ang))
        dt_per_arcsec2 = time_delay_distance_days(z_l, z_s)
        delays = (imgs.fermat - imgs.fermat.min()) * dt_per_arcsec2
        mag_i = rng.uniform(config.quasar_mag_min, config.quasar_mag_max)
        tau = 200.0 * np.exp(0.4 * rng.standard_normal()) * (1.0 + z_s)
        sf_inf = 0.2 * np.exp(0.3 * rng.standard_normal())
        t_start = t_lo - delays.max() - 60.0
        grid = np.arange(t_start, t_hi + 60.0, _DRW_STEP_DAYS)
        dmag = damped_random_walk(len(grid), _DRW_STEP_DAYS, tau, sf_inf, rng)
        systems.append(
            dict(
                id=sys_ids[k],
                ra=ra[k],
                dec=dec[k],
                z_lens=z_l,
                z_source=z_s,
                theta_e=theta_e,
                gamma1=g1,
                gamma2=g2,
                beta_x=b * np.cos(ang),
                beta_y=b * np.sin(ang),
                n_images=len(imgs.x),
                drw_tau=tau,
                drw_sf_inf=sf_inf,
                lens_galaxy_id=galaxy_id_start + k,
                **{
                    f"source_mag_{band}": mag_i + _QUASAR_MINUS_I[j] for j, band in enumerate(BANDS)
                },
            )
        )
        cos_dec = np.cos(np.deg2rad(dec[k]))
        for j in range(len(imgs.x)):
            # lens-plane x points East, y North
            image_rows.append(
                dict(
                    system_id=sys_ids[k],
                    image_index=j,
                    ra=ra[k] + imgs.x[j] / 3600.0 / cos_dec,
                    dec=dec[k] + imgs.y[j] / 3600.0,
                    dx_arcsec=imgs.x[j],
                    dy_arcsec=imgs.y[j],
                    magnification=imgs.magnification[j],
                    time_delay=delays[j],
                )
            )
        var_rows.append((np.full(len(grid), sys_ids[k]), grid, dmag))

    system_table = Table(rows=systems) if systems else Table(names=["id"], dtype=[np.int64])
    image_table = (
        Table(rows=image_rows)
        if image_rows
        else Table(
            names=["system_id", "ra", "dec", "magnification", "time_delay"],
            dtype=[np.int64, float, float, float, float],
        )
    )
    image_table.add_column(make_ids(ObjectKind.LENSED_IMAGE, len(image_table)), name="id", index=0)
    variability = Table()
    if var_rows:
        variability["system_id"] = np.concatenate([v[0] for v in var_rows])
        variability["mjd"] = np.concatenate([v[1] for v in var_rows])
        variability["dmag_i"] = np.concatenate([v[2] for v in var_rows])
    else:
        variability["system_id"] = np.zeros(0, np.int64)
        variability["mjd"] = np.zeros(0)
        variability["dmag_i"] = np.zeros(0)

    # lens galaxies: ellipticals at the lens redshift, a little brighter for bigger theta_E
    z_l = np.asarray(system_table["z_lens"]) if n else np.zeros(0)
    theta = np.asarray(system_table["theta_e"]) if n else np.zeros(0)
    mag_r = 19.5 + 2.5 * (z_l - 0.5) - 2.0 * np.log10(theta) + rng.normal(0, 0.3, n)
    red = np.array([2.45, 0.75, 0.0, -0.40, -0.70, -0.90])
    lenses = galaxy_table(
        make_ids(ObjectKind.GALAXY, n, start=galaxy_id_start),
        ra,
        dec,
        z_l,
        mag_r,
        np.ones(n),
        np.maximum(theta, 0.4),
        0.6 * np.maximum(theta, 0.4) * rng.uniform(0.8, 1.2, n),
        np.ones(n),
        rng.uniform(0.6, 1.0, n),
        rng.uniform(0.0, 180.0, n),
        np.tile(red, (n, 1)),
        np.tile(red, (n, 1)),
        np.ones(n, dtype=bool),
    )
    return system_table, image_table, variability, lenses


def lensed_image_flux(
    images: Table, systems: Table, variability: Table, band: str, mjd: np.ndarray | float
) -> np.ndarray:
    """True flux (nJy) of each lensed image in ``band`` at ``mjd``."""
    if len(images) == 0:
        return np.zeros(0)
    mjd = np.broadcast_to(np.asarray(mjd, dtype=float), (len(images),))
    sys_index = {sid: k for k, sid in enumerate(np.asarray(systems["id"]))}
    var_sys = np.asarray(variability["system_id"])
    var_mjd = np.asarray(variability["mjd"])
    var_dmag = np.asarray(variability["dmag_i"])
    out = np.empty(len(images))
    img_sys = np.asarray(images["system_id"])
    delay = np.asarray(images["time_delay"])
    mu = np.abs(np.asarray(images["magnification"]))
    for sid in np.unique(img_sys):
        sel = img_sys == sid
        on_grid = var_sys == sid
        t_emit = mjd[sel] - delay[sel]
        dm = np.interp(t_emit, var_mjd[on_grid], var_dmag[on_grid]) * DRW_AMPLITUDE[band]
        base = systems[f"source_mag_{band}"][sys_index[sid]]
        out[sel] = mu[sel] * mag_to_njy(base + dm)
    return out
