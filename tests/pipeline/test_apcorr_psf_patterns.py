"""The aperture correction follows a PSF that changes across the sensor, on scenes drawn
with GalSim directly (tests/galsim_scenes.py), not with the project's simulator.

Stars are measured as process_eimage measures them (background, PSF, detection,
measurement, aperture correction), and the bright stars' corrected PSF flux over their true
flux is fitted as a linear and a radial ramp across the sensor: a correction that does not
follow the PSF's width leaves one. The tolerance is three times the fit's own standard error
from the stars' scatter, plus 1 mmag.
"""

from __future__ import annotations

import numpy as np
import pytest
from galsim_scenes import psf_pattern_exposure
from scipy.spatial import cKDTree

from twinkles.detection.background import BackgroundTask
from twinkles.detection.detect import DetectionConfig, DetectionTask
from twinkles.measurement.apcorr import ApertureCorrectionConfig, ApertureCorrectionTask
from twinkles.measurement.measure import MeasurementTask
from twinkles.psf.determine import PsfConfig, PsfTask
from twinkles.units import MMAG_PER_FRACTION

SIZE, SPACING = 768, 64


def measured_ramps(
    scene, config: ApertureCorrectionConfig, psf_config: PsfConfig | None = None
) -> dict[str, float]:
    """Linear and radial ramps (mmag, centre to corner) of bright stars' corrected PSF flux
    over the truth, with their standard errors, and the median offset (mmag)."""
    exposure = scene.exposure
    BackgroundTask().run(exposure)
    candidates = DetectionTask(DetectionConfig(threshold=10.0)).run(exposure)
    psf = PsfTask(psf_config).run(exposure, candidates.sources)
    exposure.psf = psf.psf
    detections = DetectionTask().run(exposure)
    catalog = MeasurementTask().run(exposure, detections.sources, detections.segmentation).catalog
    used = psf.stars[psf.stars["used"]]
    ApertureCorrectionTask(config).run(
        exposure, catalog, detections.segmentation, used["x"], used["y"]
    )
    distance, index = cKDTree(np.column_stack([scene.x, scene.y])).query(
        np.column_stack([catalog["x"], catalog["y"]])
    )
    bright = (distance < 1.0) & (catalog["psfInstFlux"] > 100 * catalog["psfInstFluxErr"])
    ratio = np.asarray(catalog["psfInstFluxCorr"])[bright] / scene.flux[index[bright]]
    centre, half_diagonal = 0.5 * (SIZE - 1), 0.5 * np.hypot(SIZE, SIZE)
    X = (scene.x[index[bright]] - centre) / half_diagonal
    Y = (scene.y[index[bright]] - centre) / half_diagonal
    design = np.column_stack([np.ones_like(X), X, Y, X**2 + Y**2])
    coeffs, *_ = np.linalg.lstsq(design, ratio, rcond=None)
    scatter = np.std(ratio - design @ coeffs, ddof=4)
    errors = scatter * np.sqrt(np.diag(np.linalg.inv(design.T @ design)))
    scale = MMAG_PER_FRACTION / coeffs[0]
    return {
        "linear": scale * np.hypot(coeffs[1], coeffs[2]),
        "linear_err": scale * np.hypot(errors[1], errors[2]),
        "radial": scale * coeffs[3],
        "radial_err": scale * errors[3],
        "n": int(bright.sum()),
    }


@pytest.mark.parametrize(
    ("pattern", "profile", "seed"),
    [("linear", "moffat", 1), ("linear", "kolmogorov", 2), ("radial", "moffat", 1)],
)
def test_the_aperture_correction_follows_the_psf_across_the_sensor(pattern, profile, seed):
    scene = psf_pattern_exposure(pattern, profile, 0.12, 0.9, seed, size=SIZE, spacing=SPACING)
    ramps = measured_ramps(scene, ApertureCorrectionConfig())
    assert ramps["n"] > 60
    for kind in ("linear", "radial"):
        assert abs(ramps[kind]) < 3 * ramps[f"{kind}_err"] + 1.0, (kind, ramps)


def test_the_maps_follow_a_radial_pattern_the_psf_model_does_not():
    """The check can fail: under a PSF model held constant over the sensor, sensor-wide
    constant corrections leave a ramp of ~0.1 mag on a radial pattern, which the maps take
    out."""
    scene = psf_pattern_exposure("radial", "moffat", 0.12, 0.9, 1, size=SIZE, spacing=SPACING)
    constant = PsfConfig(degree=0, radial=False)
    flat = measured_ramps(scene, ApertureCorrectionConfig(map_model="constant"), constant)
    assert abs(flat["radial"]) > 3 * flat["radial_err"] + 50.0, flat
    scene = psf_pattern_exposure("radial", "moffat", 0.12, 0.9, 1, size=SIZE, spacing=SPACING)
    mapped = measured_ramps(scene, ApertureCorrectionConfig(), constant)
    assert abs(mapped["radial"]) < 3 * mapped["radial_err"] + 1.0, mapped


def test_the_apertures_must_grow_outwards():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="apertures must grow: core 6 < inner 6"):
        ApertureCorrectionConfig(core=6.0)


@pytest.mark.parametrize(("pattern", "profile"), [("linear", "moffat"), ("radial", "kolmogorov")])
def test_the_width_map_is_the_mode_models_where_the_psf_is_one(pattern, profile):
    """Where the stars are too few and faint for a per-pixel PSF model, the mode model's own
    core concentration is the width map the correction's steps follow: it matches the true
    PSF's change of core concentration (GalSim's profiles at each star's width) to a fifth of
    that change; the last growth step keeps the change its curve of growth predicts (a few
    dozen stars' 25-pixel apertures cannot measure a slope of their own)."""
    from galsim_scenes import PIXEL_SCALE, psf_profile

    from twinkles.measurement.aperture import sum_circles

    scene = psf_pattern_exposure(
        pattern, profile, 0.12, 0.9, 2, size=SIZE, spacing=SPACING, flux_range=(1e4, 1e5)
    )
    exposure = scene.exposure
    BackgroundTask().run(exposure)
    candidates = DetectionTask(DetectionConfig(threshold=10.0)).run(exposure)
    psf = PsfTask(PsfConfig(max_stars=28)).run(exposure, candidates.sources)
    assert psf.psf.modes  # the per-pixel models fell back to a constant kernel
    exposure.psf = psf.psf
    detections = DetectionTask().run(exposure)
    catalog = MeasurementTask().run(exposure, detections.sources, detections.segmentation).catalog
    used = psf.stars[psf.stars["used"]]
    config = ApertureCorrectionConfig()
    result = ApertureCorrectionTask(config).run(
        exposure, catalog, detections.segmentation, used["x"], used["y"]
    )
    assert result.map.width is not None and result.map.width.model == "quadratic"
    assert result.map.steps[-1].model in {"scaled", "constant"}
    true = []
    for scale in scene.width_scale:
        image = psf_profile(profile, 0.9 * scale).drawImage(nx=25, ny=25, scale=PIXEL_SCALE)
        sums = sum_circles(image.array, [12.0], [12.0], [config.core, config.inner]).flux[0]
        true.append(sums[0] / sums[1])
    true = np.asarray(true) / np.median(true)
    X = (scene.x - result.map.x0) / result.map.scale
    Y = (scene.y - result.map.y0) / result.map.scale
    mapped = result.map.width(X, Y)
    change = true.max() - true.min()
    assert change > 0.05  # the check has something to follow
    assert np.max(np.abs((mapped - np.median(mapped)) - (true - np.median(true)))) < 0.2 * change


@pytest.mark.parametrize("pattern", ["linear", "radial"])
def test_where_per_pixel_models_fall_back_to_a_constant_a_mode_model_follows(pattern):
    """28 stars of S/N 50-300 under a PSF whose width changes by 12% (GalSim Moffat): no
    per-pixel variation predicts held-out stars better than a constant kernel, which misses
    the change; the width mode follows it, so the model's core concentration (3- over 6-pixel
    aperture flux of its kernel) tracks the true PSF's over the sensor to a fifth of its
    change."""
    from galsim_scenes import PIXEL_SCALE, psf_profile

    from twinkles.measurement.aperture import sum_circles

    scene = psf_pattern_exposure(
        pattern, "moffat", 0.12, 0.9, 2, size=SIZE, spacing=SPACING, flux_range=(1e4, 1e5)
    )
    BackgroundTask().run(scene.exposure)
    candidates = DetectionTask(DetectionConfig(threshold=10.0)).run(scene.exposure)

    def concentration(kernels: np.ndarray) -> np.ndarray:
        centre = np.full(1, kernels.shape[-1] // 2, dtype=float)
        sums = np.array([sum_circles(k, centre, centre, [3.0, 6.0]).flux[0] for k in kernels])
        return sums[:, 0] / sums[:, 1]

    true = concentration(
        np.stack(
            [
                psf_profile("moffat", 0.9 * s).drawImage(nx=25, ny=25, scale=PIXEL_SCALE).array
                for s in scene.width_scale
            ]
        )
    )
    change = np.ptp(true / np.median(true))
    misses = {}
    for name, config in [
        ("per-pixel", PsfConfig(max_stars=28, mode_sets=[])),
        ("modes", PsfConfig(max_stars=28)),
    ]:
        psf = PsfTask(config).run(scene.exposure, candidates.sources)
        model = concentration(psf.psf.kernels(scene.x, scene.y))
        ratio = model / true
        misses[name] = np.ptp(ratio / np.median(ratio))
        if name == "per-pixel":
            assert (psf.stars.meta["degree"], psf.stars.meta["radial"]) == (0, False)
        else:
            assert psf.stars.meta["modes"] and (
                psf.stars.meta["degree"] or psf.stars.meta["radial"]
            )
    assert misses["per-pixel"] > 0.8 * change  # a constant kernel misses the whole change
    assert misses["modes"] < 0.2 * change, (misses, change)
