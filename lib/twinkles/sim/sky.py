"""The simulated sky of a run: cadence, per-visit conditions, truth and reference catalog.

:func:`make_sky` is deterministic in the run's seed. Each part draws from its own random
stream, so changing, say, the number of supernovae leaves the stars and galaxies unchanged.
:func:`ensure_sky` writes the sky into the run's repository once, with a fingerprint of the
configuration it was made from; a later command with a changed configuration is refused
rather than silently mixing two skies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.table import Table, vstack

from twinkles.config import ConfigError, Run, RunConfig
from twinkles.errors import TwinklesError
from twinkles.geometry import random_positions_in_disc, sky_to_tangent
from twinkles.sim.cadence import CONDITION_TRUTH_COLUMNS, make_visit_table
from twinkles.sim.galaxies import make_galaxies
from twinkles.sim.lensing import make_lensed_quasars
from twinkles.sim.psf import profile_fwhm_for_fwhm_eff
from twinkles.sim.refcat import make_reference_catalog
from twinkles.sim.stars import make_stars
from twinkles.sim.supernovae import make_supernovae
from twinkles.sim.truth import Truth

__all__ = [
    "SKY_SECTIONS",
    "Sky",
    "SkyMismatchError",
    "ensure_sky",
    "field_radius_deg",
    "make_sky",
    "placement_radius_deg",
    "random_stream",
    "sky_size_problems",
]

#: Config sections that determine the simulated sky and its images.
SKY_SECTIONS = ("seed", "field", "sensor", "cadence", "truth", "refcat", "render")

_STREAMS = {
    "cadence": 1,
    "conditions": 2,
    "stars": 3,
    "galaxies": 4,
    "supernovae": 5,
    "lensed_quasars": 6,
    "refcat": 7,
    "bright_stars": 8,
    "psf_range": 9,
    "render": 100,
}


class SkyMismatchError(TwinklesError):
    """The run's repository holds a sky made from a different configuration."""


def random_stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """Independent, reproducible random stream ``name`` of a run (plus e.g. a visit id)."""
    return np.random.default_rng(np.random.SeedSequence([seed, _STREAMS[name], *extra]))


def field_radius_deg(config: RunConfig) -> float:
    """Radius of the disc that any rotation of the sensor can see, with margins."""
    s = config.sensor
    half_diagonal = 0.5 * np.hypot(s.width_px, s.height_px) * s.pixel_scale
    margin = 4.0 * config.render.pointing_error_arcsec + 20.0 * s.pixel_scale
    return (half_diagonal + margin) / 3600.0


#: Bytes a simulated object costs while the sky is made (its truth row, reference-catalog row
#: and the temporaries of making them), generously.
BYTES_PER_OBJECT = 2048


def sky_size_problems(config: RunConfig, limit_bytes: float) -> list[str]:
    """Why the sky of ``config`` would not fit in ``limit_bytes`` of memory (empty if it
    would), naming the keys: found before anything is simulated, not as a numpy
    ``MemoryError`` naming nothing."""
    area = np.pi * field_radius_deg(config) ** 2
    t = config.truth
    counts = {
        "truth.star_density": t.star_density * area,
        "truth.bright_star_density": t.bright_star_density * area,
        "truth.galaxy_density": t.galaxy_density * area,
        "truth.n_supernovae": float(t.n_supernovae),
        "truth.n_lensed_quasars": 10.0 * t.n_lensed_quasars,  # images, lenses, light curves
    }
    total = sum(counts.values()) * BYTES_PER_OBJECT
    if total <= limit_bytes:
        return []
    return [
        f"{key}: about {n:.3g} objects on the {area:.3g} deg^2 the sensor sees, "
        f"{n * BYTES_PER_OBJECT / 1e9:.3g} GB to simulate, beyond the {limit_bytes / 1e9:.3g} GB "
        f"this machine can give"
        for key, n in counts.items()
        if n * BYTES_PER_OBJECT > 0.1 * limit_bytes
    ]


def placement_radius_deg(config: RunConfig) -> float:
    """Radius of the disc that stays on the sensor in every visit, whatever its rotation.

    Supernova hosts and lensed quasars are placed inside it so their light curves are complete.
    """
    s = config.sensor
    inner = 0.48 * min(s.width_px, s.height_px) * s.pixel_scale
    return max(inner - config.render.pointing_error_arcsec, 0.0) / 3600.0


@dataclass
class Sky:
    """Everything simulated about a run before any image is drawn."""

    visits: Table
    conditions: Table
    truth: Truth
    refcat: Table

    def visit(self, visit: int) -> tuple[Any, Any]:
        """(visit-table row, conditions row) of one visit."""
        sel = np.flatnonzero(np.asarray(self.visits["obsHistID"]) == visit)
        if len(sel) != 1:
            raise KeyError(f"visit {visit} is not in the run's visit table")
        return self.visits[sel[0]], self.conditions[sel[0]]

    @classmethod
    def read(cls, butler) -> Sky:
        """Load a sky written by :func:`ensure_sky`."""
        return cls(
            visits=butler.get("visitTable"),
            conditions=butler.get("visitConditionsTruth"),
            truth=Truth.read(butler),
            refcat=butler.get("refcat"),
        )


def _psf_range(config: RunConfig, visits: Table, table: Table, rng: np.random.Generator) -> None:
    """Per visit, the PSF's profile and how its width changes over the sensor, where the
    render configuration asks for a range (``psf_profile: mixed``, ``psf_variation_min``,
    ``psf_pattern``); a run that asks for none keeps one profile and one amplitude (and
    the draws of the ``conditions`` stream are the same either way)."""
    render = config.render
    n = len(table)
    if render.psf_profile == "mixed":
        profiles = rng.choice(list(render.mixed_profiles), n)
        # betas on a 0.5 grid: each (profile, beta) needs its own n_eff table
        betas = np.round(2 * rng.uniform(render.moffat_beta_min, render.moffat_beta_max, n)) / 2
        table["psf_profile"] = profiles
        table["psf_beta"] = np.where(profiles == "moffat", betas, render.moffat_beta)
        fwhm = np.asarray(table["psf_fwhm"], dtype=float).copy()
        for profile, beta in {(p, b) for p, b in zip(profiles, table["psf_beta"], strict=True)}:
            sel = (profiles == profile) & (np.asarray(table["psf_beta"]) == beta)
            fwhm[sel] = profile_fwhm_for_fwhm_eff(
                np.asarray(visits["FWHMeff"], dtype=float)[sel],
                config.sensor.pixel_scale,
                str(profile),
                float(beta),
            )
        table["psf_fwhm"] = fwhm
    amplitude = np.full(n, render.psf_variation)
    if render.psf_variation_min is not None:
        amplitude = rng.uniform(render.psf_variation_min, render.psf_variation, n)
    radial = {
        "linear": np.zeros(n, dtype=bool),
        "radial": np.ones(n, dtype=bool),
        "mixed": rng.random(n) < 0.5,
    }[render.psf_pattern]
    scale = np.divide(
        amplitude, render.psf_variation, out=np.zeros(n), where=render.psf_variation > 0
    )
    for axis in ("x", "y"):
        gradient = np.asarray(table[f"psf_fwhm_grad_{axis}"], dtype=float) * scale
        table[f"psf_fwhm_grad_{axis}"] = np.where(radial, 0.0, gradient)
    table["psf_fwhm_radial"] = np.where(radial, amplitude, 0.0)


def _conditions(config: RunConfig, visits: Table, rng: np.random.Generator) -> Table:
    """Per-visit truth the telescope does not know: zero point, sky, PSF, true pointing."""
    n = len(visits)
    render = config.render

    def random_direction(magnitude: float) -> tuple[np.ndarray, np.ndarray]:
        angle = rng.uniform(0, 2 * np.pi, n)
        return magnitude * np.cos(angle), magnitude * np.sin(angle)

    table = Table()
    table["obsHistID"] = visits["obsHistID"]
    for col in CONDITION_TRUTH_COLUMNS:
        table[col] = visits[col]
    table["psf_profile"] = np.full(n, render.psf_profile, dtype="U17")
    table["psf_fwhm"] = visits["FWHMgeom"]
    table["psf_beta"] = np.full(n, render.moffat_beta)
    table["psf_e1"] = rng.normal(0.0, render.psf_ellipticity, n)
    table["psf_e2"] = rng.normal(0.0, render.psf_ellipticity, n)
    table["psf_fwhm_grad_x"], table["psf_fwhm_grad_y"] = random_direction(render.psf_variation)
    table["psf_fwhm_radial"] = np.zeros(n)
    _psf_range(config, visits, table, random_stream(config.seed, "psf_range"))
    for comp in ("e1", "e2"):
        for axis in ("x", "y"):
            table[f"psf_{comp}_grad_{axis}"] = rng.normal(0.0, 0.5 * render.psf_ellipticity, n)
    cos_dec = np.cos(np.deg2rad(np.asarray(visits["fieldDec"])))
    err = render.pointing_error_arcsec / 3600.0
    table["true_ra"] = (
        np.asarray(visits["fieldRA"]) + err * rng.standard_normal(n) / cos_dec
    ) % 360
    table["true_dec"] = np.asarray(visits["fieldDec"]) + err * rng.standard_normal(n)
    table["true_rotation"] = np.asarray(visits["rotSkyPos"]) + render.rotation_error_deg * (
        rng.standard_normal(n)
    )
    table["distortion_px"] = np.full(n, render.distortion_arcsec / config.sensor.pixel_scale)
    table["sky_grad_x"], table["sky_grad_y"] = random_direction(render.sky_gradient)
    return table


def make_sky(config: RunConfig) -> Sky:
    """Simulate the run's cadence, conditions, truth populations and reference catalog."""
    seed = config.seed
    full = make_visit_table(
        config.cadence, config.field, config.sensor, config.render, random_stream(seed, "cadence")
    )
    conditions = _conditions(config, full, random_stream(seed, "conditions"))
    visits = full.copy()
    visits.remove_columns(list(CONDITION_TRUTH_COLUMNS))

    t = config.truth
    radius = field_radius_deg(config)
    area = np.pi * radius**2
    ra0, dec0 = config.field.ra, config.field.dec

    rng = random_stream(seed, "stars")
    n_stars = rng.poisson(t.star_density * area)
    ra, dec = random_positions_in_disc(n_stars, ra0, dec0, radius, rng)
    stars = make_stars(t, ra, dec, config.cadence.start_mjd, rng)
    if t.bright_star_density > 0:
        rng = random_stream(seed, "bright_stars")
        n_bright = rng.poisson(t.bright_star_density * area)
        ra, dec = random_positions_in_disc(n_bright, ra0, dec0, radius, rng)
        r_mags = rng.uniform(t.bright_star_mag_min, t.bright_star_mag_max, n_bright)
        bright = make_stars(
            t, ra, dec, config.cadence.start_mjd, rng, r_mags=r_mags, first_id=n_stars + 1
        )
        stars = vstack([stars, bright])

    rng = random_stream(seed, "galaxies")
    n_gal = rng.poisson(t.galaxy_density * area)
    ra, dec = random_positions_in_disc(n_gal, ra0, dec0, radius, rng)
    galaxies = make_galaxies(t, ra, dec, rng)

    rng = random_stream(seed, "lensed_quasars")
    mjd = np.asarray(visits["expMJD"])
    systems, images, variability, lenses = make_lensed_quasars(
        t,
        t.n_lensed_quasars,
        ra0,
        dec0,
        placement_radius_deg(config),
        (float(mjd.min()), float(mjd.max())),
        galaxy_id_start=len(galaxies) + 1,
        rng=rng,
    )
    if len(lenses):
        galaxies = vstack([galaxies, lenses])

    rng = random_stream(seed, "supernovae")
    xi, eta = sky_to_tangent(np.asarray(galaxies["ra"]), np.asarray(galaxies["dec"]), ra0, dec0)
    inner = np.hypot(xi, eta) < placement_radius_deg(config)
    host_ok = (
        inner
        & ~np.asarray(galaxies["is_lens"])
        & (np.asarray(galaxies["redshift"]) < t.sn_max_redshift)
    )
    if t.n_supernovae and not host_ok.any():
        raise ConfigError(
            "truth",
            [
                f"truth.sn_max_redshift: no galaxy with redshift < {t.sn_max_redshift} lies "
                f'within {placement_radius_deg(config) * 3600:.0f}" of the centre to host the '
                f"{t.n_supernovae} supernovae (raise it, or truth.galaxy_density)"
            ],
        )
    supernovae = make_supernovae(t.n_supernovae, galaxies[host_ok], mjd, rng)

    truth = Truth(
        stars=stars,
        galaxies=galaxies,
        supernovae=supernovae,
        lensed_systems=systems,
        lensed_images=images,
        quasar_variability=variability,
    )
    refcat = make_reference_catalog(stars, galaxies, config.refcat, random_stream(seed, "refcat"))
    return Sky(visits=visits, conditions=conditions, truth=truth, refcat=refcat)


def sky_fingerprint(config: RunConfig) -> dict[str, Any]:
    """The parts of the configuration the sky depends on."""
    dump = config.model_dump(mode="json")
    return {key: dump[key] for key in SKY_SECTIONS}


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def ensure_sky(run: Run, force: bool = False) -> Sky:
    """The run's sky: read from its repository, or simulated and written there.

    Raises
    ------
    SkyMismatchError
        The repository holds a sky from a different configuration and ``force`` is False.
    """
    butler = run.butler
    fingerprint = sky_fingerprint(run.config)
    if butler.exists("skyFingerprint") and not force:
        stored = butler.get("skyFingerprint")
        changed = _differences(stored, fingerprint)
        if changed:
            raise SkyMismatchError(
                f"{run.dir} was simulated from a different configuration "
                f"(changed: {', '.join(changed)}); rerun with --force to simulate it again, "
                f"or use a new run name"
            )
        return Sky.read(butler)
    sky = make_sky(run.config)
    butler.put(sky.visits, "visitTable")
    butler.put(sky.conditions, "visitConditionsTruth")
    sky.truth.write(butler)
    butler.put(sky.refcat, "refcat")
    # the fingerprint goes last: its presence means the sky is complete
    butler.put(json.loads(json.dumps(fingerprint)), "skyFingerprint")
    return sky
