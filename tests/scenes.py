"""Synthetic scenes for the tests: controlled content drawn by the real renderer.

A scene is a real simulated sky (cadence, conditions, PSF, WCS) whose stars are replaced by a
grid on the pixel frame of its first visit, so tests know exactly what is where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from twinkles.config import RunConfig, parse_run_config
from twinkles.image import Exposure
from twinkles.isr.eimage import read_eimage
from twinkles.sim.refcat import make_reference_catalog
from twinkles.sim.render import RenderedVisit, eimage_hdulist
from twinkles.sim.sky import Sky, make_sky
from twinkles.sim.stars import make_stars
from twinkles.sim.wcs import make_wcs

SIZE = 512
SPACING = 40


@dataclass
class Scene:
    """A simulated sky with stars on a grid of the first visit's pixels, and that visit."""

    config: RunConfig
    sky: Sky
    visit: int
    x: np.ndarray
    y: np.ndarray
    rendered: RenderedVisit | None = None


def make_scene(
    render=None,
    grid_mags=(18.0, 21.0),
    seed=7,
    spacing=SPACING,
    extra=None,
    size=SIZE,
    galaxy_density=0.0,
    scatter: bool = False,
) -> Scene:
    """A square sensor, one r-band visit of interest, stars on a grid in its pixel frame.

    ``scatter`` moves each star randomly within its grid cell (keeping half a cell between
    neighbours): a lattice would let astrometric matching lock onto any lattice shift.
    """
    data = {
        "seed": seed,
        "sensor": {"width_px": size, "height_px": size},
        "cadence": {"n_years": 1, "n_visits": 3, "filters": ["r"]},
        "truth": {
            "star_density": 0.0,
            "galaxy_density": galaxy_density,
            "n_supernovae": 0,
            "n_lensed_quasars": 0,
        },
        "render": {"cosmic_ray_rate": 0.0, **(render or {})},
    }
    config = parse_run_config(data, "scene", default_name="scene")
    sky = make_sky(config)
    visit = int(sky.visits["obsHistID"][0])
    _, cond = sky.visit(visit)
    true_wcs = make_wcs(
        float(cond["true_ra"]),
        float(cond["true_dec"]),
        float(cond["true_rotation"]),
        0.2,
        size,
        size,
        float(cond["distortion_px"]),
    )
    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(30, size - 30, spacing), np.arange(30, size - 30, spacing))
    jitter = 0.25 * spacing if scatter else 0.5  # else just random sub-pixel phases
    x = xs.ravel() + rng.uniform(-jitter, jitter, xs.size)
    y = ys.ravel() + rng.uniform(-jitter, jitter, xs.size)
    if extra is not None:
        x, y = np.append(x, extra[0]), np.append(y, extra[1])
    ra, dec = true_wcs.all_pix2world(x, y, 0)
    stars = make_stars(config.truth, ra, dec, 60000.0, rng)
    mags = rng.uniform(*grid_mags, len(x))
    if extra is not None:
        mags[-1] = extra[2]
    for band in "ugrizy":
        stars[f"mag_{band}"] = mags
    stars["is_variable"] = False
    stars["var_amplitude"] = 0.0
    sky.truth.stars = stars
    return Scene(config, sky, visit, x, y)


def scene_exposure(rendered: RenderedVisit, directory: Path) -> Exposure:
    """The rendered visit written as an eimage and read back, as the pipeline reads it."""
    path = Path(directory) / f"eimage_{rendered.visit}.fits"
    eimage_hdulist(rendered).writeto(path, overwrite=True)
    return read_eimage(path, rendered.visit)


def scene_refcat(scene: Scene):
    """A reference catalog of the scene's stars (and galaxies)."""
    config = scene.config
    return make_reference_catalog(
        scene.sky.truth.stars, scene.sky.truth.galaxies, config.refcat, np.random.default_rng(3)
    )


def process_scene(scene: Scene, directory: Path) -> SimpleNamespace:
    """A scene rendered and taken through process_eimage's stages up to aperture correction:
    ISR, background, a 10-sigma pass for the PSF, detection and measurement with it."""
    from twinkles.detection.background import BackgroundTask
    from twinkles.detection.detect import DetectionConfig, DetectionTask
    from twinkles.isr.eimage import EimageIsrTask
    from twinkles.measurement.apcorr import ApertureCorrectionTask
    from twinkles.measurement.measure import MeasurementTask
    from twinkles.psf.determine import PsfTask
    from twinkles.sim.render import render_visit

    rendered = render_visit(scene.sky, scene.config, scene.visit)
    exp = scene_exposure(rendered, directory)
    EimageIsrTask().run(exp)
    BackgroundTask().run(exp)
    candidates = DetectionTask(DetectionConfig(threshold=10.0)).run(exp)
    psf = PsfTask().run(exp, candidates.sources)
    exp.psf = psf.psf
    det = DetectionTask().run(exp)
    cat = MeasurementTask().run(exp, det.sources, det.segmentation).catalog
    used = psf.stars[psf.stars["used"]]
    apcorr = ApertureCorrectionTask().run(exp, cat, det.segmentation, used["x"], used["y"])
    return SimpleNamespace(
        scene=scene, rendered=rendered, exp=exp, psf=psf, det=det, cat=cat, apcorr=apcorr
    )
