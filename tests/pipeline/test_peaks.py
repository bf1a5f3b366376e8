"""Peaks by prominence, and the detection of faint neighbours that deblending leaves in a bright
star's footprint (GalSim scenes, not twinkles.sim)."""

from __future__ import annotations

import numpy as np
import pytest
from galsim_scenes import PIXEL_SCALE, neighbours_exposure, psf_profile
from scipy import ndimage
from scipy.spatial import cKDTree

from twinkles.detection.detect import DetectionConfig, DetectionTask, _radial_profiles
from twinkles.detection.peaks import peak_prominence
from twinkles.image.psf import PixelPSF

EIGHT = np.ones((3, 3), dtype=bool)


def _brute_force_prominence(image: np.ndarray, include: np.ndarray) -> dict:
    """Each local maximum's prominence by lowering a threshold through every value: the level
    at which its island of ``include`` pixels at or above the threshold first holds a higher
    pixel (of equal values, the first in row-major order is the higher)."""
    h, w = image.shape
    flat = image.ravel()
    rank = np.empty(flat.size, dtype=int)
    ranked = np.flatnonzero(include.ravel())
    ranked = ranked[np.argsort(-flat[ranked], kind="stable")]
    rank[ranked] = np.arange(len(ranked))
    result = {}
    for index in ranked:
        y, x = divmod(int(index), w)
        neighbours = [
            (y + dy) * w + (x + dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if (dy or dx) and 0 <= y + dy < h and 0 <= x + dx < w and include[y + dy, x + dx]
        ]
        if any(rank[n] < rank[index] for n in neighbours):
            continue  # a higher neighbour: no maximum
        prominence = np.inf
        for level in np.unique(flat[ranked])[::-1]:
            if level > flat[index]:
                continue
            labels, _ = ndimage.label(include & (image >= level), structure=EIGHT)
            island = np.flatnonzero(labels.ravel() == labels[y, x])
            if np.any(rank[island] < rank[index]):
                prominence = flat[index] - level
                break
        result[(y, x)] = prominence
    return result


def test_prominence_of_a_profile_by_hand():
    # two peaks on one ridge (5 and 8, saddle 3), and a region of its own (4)
    image = np.array([[0, 5, 3, 8, 0, 4, 1]], dtype=float)
    _, x, prominence = peak_prominence(image, image > 0)
    found = dict(zip(x.tolist(), prominence.tolist(), strict=True))
    assert found == {1: 2.0, 3: np.inf, 5: np.inf}


def test_the_highest_saddle_counts_not_the_nearest():
    """A peak (9) joined to a higher one (12) by two paths: a direct one through a low pass (1)
    and a longer one along a ridge at 6. It is 3 high above its surroundings, not 8."""
    image = np.array(
        [
            [6, 6, 6, 6, 6],
            [6, 0, 0, 0, 6],
            [9, 1, 1, 1, 12],
        ],
        dtype=float,
    )
    y, x, prominence = peak_prominence(image, image > 0)
    found = {(int(a), int(b)): float(p) for a, b, p in zip(y, x, prominence, strict=True)}
    # the ridge's flat top counts as a maximum of no height where it meets the higher peak
    assert {key: p for key, p in found.items() if p > 0} == {(2, 0): 3.0, (2, 4): np.inf}


@pytest.mark.parametrize("seed", range(6))
def test_prominence_matches_a_brute_force_sweep_of_thresholds(seed):
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=(14, 16)), 1.2)
    image = np.round(image, 2)  # ties too
    include = image > np.quantile(image, 0.3)
    y, x, prominence = peak_prominence(image, include)
    ours = {(int(a), int(b)): float(p) for a, b, p in zip(y, x, prominence, strict=True)}
    reference = _brute_force_prominence(image, include)
    assert ours.keys() == reference.keys()
    for key, value in reference.items():
        assert ours[key] == pytest.approx(value, abs=1e-12)
    # one infinite peak per 8-connected region
    _, n_regions = ndimage.label(include, structure=EIGHT)
    assert np.sum(np.isinf(prominence)) == n_regions


def test_prominence_needs_matching_shapes():
    with pytest.raises(ValueError, match=r"image .* and include"):
        peak_prominence(np.zeros((4, 4)), np.ones((4, 5), dtype=bool))


def _detected(scene, prominence: float) -> tuple[np.ndarray, np.ndarray]:
    """Each true object's nearest detection's distance, and each detection's nearest object's."""
    config = DetectionConfig(variance_map=True, sky_normalise=True, peak_prominence=prominence)
    sources = DetectionTask(config).run(scene.exposure.copy()).sources
    found = np.column_stack([sources["x"], sources["y"]])
    truth = np.column_stack([scene.x, scene.y])
    return cKDTree(found).query(truth)[0], cKDTree(truth).query(found)


def test_prominent_peaks_find_the_faint_neighbours_of_bright_stars():
    """Stars 20-150 times fainter than a bright star 2.4-3.4" away (3.4-4.9 FWHM) under Moffat
    and Kolmogorov PSFs: multi-threshold deblending leaves most in the bright star's footprint
    (the branch holds less than its share of the blend); their peaks rise well above the
    saddle, and are found. Nothing is found that is not there, the galaxies are not shredded
    and each star and galaxy is found once."""
    found, found_before = [], []
    for seed in range(1, 5):
        for profile in ("moffat", "kolmogorov"):
            scene = neighbours_exposure(
                seed=seed, profile=profile, separation_arcsec=(2.4, 3.4), ratio=(20.0, 150.0)
            )
            neighbour = scene.kind == "neighbour"
            before, _ = _detected(scene, 0.0)
            after, (to_truth, nearest) = _detected(scene, 5.0)
            found_before.append(before[neighbour] < 3.0)
            found.append(after[neighbour] < 3.0)
            # every detection is a true object, one detection per object
            assert np.all(to_truth < 3.0)
            assert np.all(np.bincount(nearest, minlength=len(scene.x))[~neighbour] == 1)
    assert np.mean(np.concatenate(found)) >= 0.9
    assert np.mean(np.concatenate(found_before)) <= 0.65


def _detections(exposure, star_subtraction_snr: float):
    config = DetectionConfig(
        variance_map=True,
        sky_normalise=True,
        peak_prominence=5.0,
        star_subtraction_snr=star_subtraction_snr,
    )
    return DetectionTask(config).run(exposure.copy()).sources


@pytest.mark.parametrize("profile", ["moffat", "kolmogorov"])
@pytest.mark.parametrize("seed", [1, 2])
def test_subtracting_bright_stars_finds_the_neighbours_on_their_wings(profile, seed):
    """Stars 100-1000 times fainter than a bright star 1.8-3.2" away sit on its steep wing:
    a shoulder, with no saddle for their prominence, so most are missed. With the bright
    stars' PSF models (a 25-px kernel: the wings beyond it are the residual's azimuthal
    median) subtracted, the residual's peaks find most of them; every detection is a true
    object and each bright star and galaxy is found once."""
    scene = neighbours_exposure(seed=seed, profile=profile)
    neighbour = scene.kind == "neighbour"
    truth = np.column_stack([scene.x, scene.y])
    found = {}
    for snr in (0.0, 50.0):
        sources = _detections(scene.exposure, snr)
        xy = np.column_stack([sources["x"], sources["y"]])
        to_truth, nearest = cKDTree(truth).query(xy)
        assert np.all(to_truth < 3.0)
        assert np.all(np.bincount(nearest, minlength=len(scene.x))[~neighbour] == 1)
        found[snr] = np.mean(cKDTree(xy).query(truth)[0][neighbour] < 3.0)
    assert found[0.0] <= 0.4
    assert found[50.0] >= 0.65


@pytest.mark.parametrize(("width", "seed"), [(0.95, 1), (1.05, 2)])
def test_a_wrong_psf_model_makes_no_neighbours(width, seed):
    """The PSF model 5% too narrow or too wide and sheared by 0.03: what it leaves of the
    bright stars (their azimuthal median and the model error's share of the noise aside) is
    no source; the neighbours are still found."""
    scene = neighbours_exposure(seed=seed, profile="moffat")
    kernel = (
        psf_profile("moffat", 0.7 * width)
        .shear(e1=0.03, e2=0.0)
        .drawImage(nx=25, ny=25, scale=PIXEL_SCALE)
        .array
    )
    exposure = scene.exposure.copy()
    exposure.psf = PixelPSF((kernel / kernel.sum())[None], 0, 320.0, 320.0, 320.0)
    sources = _detections(exposure, 50.0)
    peaks = np.asarray(sources["flag_peak"], dtype=bool)
    truth = np.column_stack([scene.x, scene.y])
    to_truth, _ = cKDTree(truth).query(np.column_stack([sources["x"], sources["y"]])[peaks])
    assert np.all(to_truth < 3.0)
    found = cKDTree(np.column_stack([sources["x"], sources["y"]])).query(truth)[0] < 3.0
    assert np.mean(found[scene.kind == "neighbour"]) >= 0.6


def test_radial_profiles_are_the_azimuthal_median():
    """A radial profile is returned ring by ring; a compact neighbour 15 times its ring's
    level moves that ring's median by under 5% (its mean, by 70%); masked pixels
    are left out; nothing beyond the radius."""
    yy, xx = np.indices((81, 81))
    r = np.hypot(yy - 40.3, xx - 39.8)
    profile = 1e4 / (1.0 + (r / 3.0) ** 2) ** 2
    neighbour = 500.0 * np.exp(-0.5 * np.hypot(yy - 52, xx - 40) ** 2 / 1.5**2)
    bad = np.zeros((81, 81), dtype=bool)
    bad[30:33, 45:48] = True
    image = profile + neighbour
    image[bad] = 1e9
    out = _radial_profiles(image, bad, np.array([39.8]), np.array([40.3]), 25)
    ring = np.rint(r).astype(int)
    inside = (ring <= 25) & ~bad
    expected = np.array([np.median(profile[(ring == k) & ~bad]) for k in range(26)])
    np.testing.assert_allclose(out[inside], expected[ring[inside]], rtol=0.05)
    assert np.all(out[ring > 25] == 0.0)
