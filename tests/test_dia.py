"""The difference-imaging branch end to end on the tiny run, scored against the truth.

The tiny run has 4 visits per band in g, r, i over one season, templates of the 2 best-seeing
visits per band, 2 supernovae and a lensed quasar with two images. Visits in their own
template are excluded from noise and pull statistics (their difference is not independent of
the template). With a dozen supernova points, bounds on pulls are three standard errors of
the estimators (median: 1.25/sqrt(n); IQR-based spread: 1.17/sqrt(n)); the demo's numbers, on
which the issue's bounds are checked, are quoted in the issue's closing note.
"""

from __future__ import annotations

import nbformat
import numpy as np
import pytest

from twinkles.diffim.subtract import (
    ImageDifferenceConfig,
    ImageDifferenceError,
    ImageDifferenceTask,
)
from twinkles.image import Exposure
from twinkles.note.notebooks import labelled_figures
from twinkles.sim.truth import Truth
from twinkles.validation.dia import (
    forced_dia_truth,
    light_curve_pulls,
    score_difference_images,
)
from twinkles.workflow.status import run_status


def figures_in(path) -> int:
    nb = nbformat.read(path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def test_every_step_ran_with_its_figures(tiny_dia):
    status = {s["step"]: s for s in run_status(tiny_dia)["steps"]}
    for step, n in [
        ("make_template", 3),
        ("image_difference", 12),
        ("inject_sources", 12),
        ("associate_dia", 1),
        ("forced_dia_photometry", 12),
        ("validate_dia", 1),
    ]:
        assert (status[step]["done"], status[step]["failed"]) == (n, 0), step
    notebooks = tiny_dia.dir / "notebooks"
    # every stage of the subtraction shows its output in its own cell
    stages = {
        "template-on-visit",
        "kernel",
        "decorrelation",
        "dia-sources",
        "difference-histogram",
        "difference-cutouts",
    }
    for path in (notebooks / "image_difference").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert set(labelled_figures(nb)) == stages, path.name
        printed = [
            "".join(o.get("text", "") for o in c.get("outputs", []))
            for c in nb.cells
            if c.cell_type == "code" and "= task." in c.source
        ]
        assert len(printed) == 6 and all(printed), path.name  # each stage says what it did
    (validation,) = (notebooks / "validate_dia").glob("*.ipynb")
    assert figures_in(validation) >= 4  # noise, spurious and recovery, SN light curve, quasar


def test_difference_noise_matches_the_variance_plane(tiny_dia):
    metrics = tiny_dia.butler.get("diaMetrics")
    assert metrics["n_independent"] >= 4
    assert 0.9 <= metrics["noise_ratio_min"] <= metrics["noise_ratio_max"] <= 1.1


def test_transients_recovered_and_spurious_counted(tiny_dia):
    metrics = tiny_dia.butler.get("diaMetrics")
    assert metrics["n_expected_transients"] >= 5
    assert metrics["recovery"] >= 0.95
    assert len(metrics["spurious_per_visit"]) == 12
    # 20x Run-1 star density on 256^2 pixels: a few residuals of bright stars per visit
    assert metrics["spurious_per_visit_mean"] < 10


def test_injected_sources_measure_the_efficiency(tiny_dia):
    metrics = tiny_dia.butler.get("diaMetrics")
    (total,) = [r for r in metrics["injection"] if r["band"] == "all"]
    # 30 per visit fit on a 256 px sensor 3" apart
    assert total["n"] == 12 * 30
    # detection at 5.5 sigma of the PSF-flux noise: 50% efficiency there, up to a sigma later
    # for the detection filter's loss against the PSF; the fit to 360 injections sets it to
    # ~0.3
    assert 5.0 <= total["snr50"] <= 7.5
    assert total["efficiency_bright"] >= 0.95
    assert total["efficiency_bright_reliable"] >= 0.9
    # forced photometry of the injections away from galaxies is unbiased, over all visits
    # (one visit's kernel can bias its own: visit 3 of this run reads -1.1 sigma)
    pulls = []
    for visit in tiny_dia.butler.get("visitTable")["obsHistID"]:
        injections = tiny_dia.butler.get("injectedSources", visit=int(visit))
        assert len(injections) == 30
        uniform = injections[~injections["on_galaxy"]]
        pulls.append((uniform["forced_flux"] - uniform["flux"]) / uniform["forced_flux_err"])
    pull = np.concatenate(pulls)
    pull = pull[np.isfinite(pull)]  # visits without a difference image measure nothing
    n = len(pull)
    assert n >= 100
    assert abs(np.median(pull)) < 3 * 1.25 / np.sqrt(n) + 0.1


def test_supernova_light_curves_follow_the_truth(tiny_dia):
    butler = tiny_dia.butler
    visits = butler.get("visitTable")
    templates = {b: butler.get("goodSeeingCoadd_summary", filter=b) for b in "gri"}
    rows = forced_dia_truth(butler, Truth.read(butler), butler.get("diaObject"), visits, templates)
    sne = rows[(rows["kind"] == "supernova") & ~rows["in_template"] & ~rows["flag_off_image"]]
    # forced photometry on every difference image, not only where the SN was detected
    for sn in set(sne["truth_id"].tolist()):
        points = sne[sne["truth_id"] == sn]
        assert len(points) == np.sum(~np.asarray(rows[rows["truth_id"] == sn]["in_template"]))
    stats = light_curve_pulls(sne)
    n = stats["n"]
    assert n >= 8
    # validate_dia gets the same rows from its one pass over the difference images
    dia_table = butler.get("diaSourceTable")
    reliability = dict(
        zip(dia_table["diaSourceId"].tolist(), dia_table["reliability"].tolist(), strict=True)
    )
    scored = score_difference_images(
        butler,
        Truth.read(butler),
        visits,
        templates,
        reliability,
        tiny_dia.pixel_scale,
        dia_objects=butler.get("diaObject"),
    )
    assert scored.forced.colnames == rows.colnames and len(scored.forced) == len(rows)
    for name in ("diaObjectId", "truth_id", "psFlux", "expected_flux", "own_flux"):
        assert np.array_equal(scored.forced[name], rows[name], equal_nan=True)
    assert abs(stats["pull_std"] - 1.0) < 3 * 1.17 / np.sqrt(n) + 0.15
    assert abs(stats["pull_median"]) < 3 * 1.25 / np.sqrt(n) + 0.1


def test_lensed_quasar_images_are_separate_dia_objects(tiny_dia):
    (system,) = tiny_dia.butler.get("diaMetrics")["lensed_quasars"]
    assert system["n_resolved"] == 2  # the tiny run places images >= 2 FWHM apart
    # each resolved image is the nearest DIAObject's only image of its system
    assert system["n_resolved_separate"] == 2
    n = system["n_points"]
    assert n >= 6
    assert abs(system["pull_std"] - 1.0) < 3 * 1.17 / np.sqrt(n) + 0.15
    assert abs(system["pull_median"]) < 3 * 1.25 / np.sqrt(n) + 0.1


def test_forced_dia_photometry_covers_every_dia_object(tiny_dia):
    butler = tiny_dia.butler
    objects = butler.get("diaObject")
    for visit in butler.get("visitTable")["obsHistID"]:
        forced = butler.get("forced_diaSrc", visit=int(visit))
        assert sorted(forced["diaObjectId"]) == sorted(objects["diaObjectId"])
    sources = butler.get("diaSourceTable")
    assert set(sources["diaObjectId"]) == set(objects["diaObjectId"])
    assert objects["nDiaSources"].sum() == len(sources)


def test_dia_catalogs_in_the_database_equal_the_files(tiny_dia, tmp_path):
    from twinkles.catalogs import CatalogDatabase, IngestTask
    from twinkles.catalogs.queries import light_curve, row_counts

    db = CatalogDatabase(f"sqlite:///{tmp_path / 'catalogs.db'}")
    assert IngestTask().run(tiny_dia, db).ok
    butler = tiny_dia.butler
    objects = butler.get("diaObject")
    counts = row_counts(db, "tiny")
    assert counts["DiaObject"] == len(objects)
    assert counts["DiaSource"] == len(butler.get("diaSourceTable"))
    best = int(objects["diaObjectId"][np.argmax(objects["nDiaSources"])])
    curve = light_curve(db, "tiny", best, dia=True)
    assert len(curve) == 12
    for row in curve:
        forced = butler.get("forced_diaSrc", visit=int(row["ccdVisitId"]))
        ref = forced[forced["diaObjectId"] == best][0]
        np.testing.assert_array_equal(
            [row["psFlux"], row["psFluxErr"]], [ref["psFlux"], ref["psFluxErr"]]
        )


def test_a_visit_without_kernel_stars_fails_with_its_name(tiny_dia):
    butler = tiny_dia.butler
    calexp = Exposure.read_fits(butler.path("calexp", visit=1))
    template = Exposure.read_fits(butler.path("goodSeeingCoadd", filter=calexp.metadata["filter"]))
    refcat = butler.get("refcat")[:0]
    with pytest.raises(ImageDifferenceError, match="visit 1: only 0 usable star stamps"):
        ImageDifferenceTask().run(calexp, template, refcat, 60000.0)


def test_the_recipes_stages_are_what_run_does(tiny_dia):
    """image_difference calls the task's stages cell by cell; every other caller calls ``run``:
    both give the same difference and DIASources, and the recipe wrote the same, to float
    round-off. The recipe ran in another process, whose kernel runs one BLAS thread where this
    one may run several, and numpy's sums round differently with the arrays' memory alignment:
    its kernel solution differs in the last bits, and its float32 images by their rounding
    (a relative 6e-8 per pixel), so its fluxes agree to a few times that, not to float64's."""
    from twinkles.diffim.subtract import DIA_SOURCE_COLUMNS

    butler = tiny_dia.butler
    visits = butler.get("visitTable")
    row = visits[visits["obsHistID"] == 2][0]
    calexp = butler.get("calexp", visit=2)
    template = butler.get("goodSeeingCoadd", filter=str(row["filter"]))
    refcat = butler.get("refcat")
    task = ImageDifferenceTask()
    whole = task.run(calexp.copy(), template, refcat, float(row["expMJD"]))

    on_visit = task.warp_template(calexp, template)
    match = task.match_kernel(calexp, on_visit, refcat)
    subtraction = task.subtract(calexp, on_visit, match)
    diff = task.decorrelate(calexp, on_visit, match, subtraction)
    found = task.detect_dia_sources(diff, calexp, on_visit, subtraction, float(row["expMJD"]))
    np.testing.assert_array_equal(diff.mask, whole.difference.mask)
    for plane in ("image", "variance"):
        ours, theirs = getattr(diff, plane), getattr(whole.difference, plane)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6 * np.nanstd(theirs))
    assert diff.metadata.keys() == whole.difference.metadata.keys()
    assert task.noise_ratio(diff, found.usable) == pytest.approx(whole.noise_ratio, rel=1e-9)
    written = butler.get("diaSrc", visit=2)
    assert len(written) == len(whole.dia_sources) == len(found.sources) > 0
    for name in DIA_SOURCE_COLUMNS:
        expected = np.asarray(whole.dia_sources[name])
        # the same process: the same arithmetic; the recipe's: float32 round-off, which
        # features made of differences (apRatio) carry relative to their column's scale
        scale = float(np.nanmax(np.abs(expected))) if expected.dtype.kind == "f" else 0.0
        # near a bright star the images' float32 rounding is the star's, not the source's:
        # one source 8 sigma faint beside a star differed by 2.5e-5 of itself in every column
        # made of its flux (2e-4 of its error). Each value may differ by a thousandth of its
        # relative error, 1 / |S/N|, which is still round-off
        own = 1e-3 * np.abs(expected) / np.abs(np.asarray(whole.dia_sources["snr"]))
        for got, rtol, atol in (
            (found.sources[name], 1e-9, 1e-12),
            (written[name], 1e-6, np.maximum(1e-5 * scale, own)),
        ):
            if expected.dtype.kind == "f":
                off = np.abs(np.asarray(got, float) - expected) > rtol * np.abs(expected) + atol
                assert not np.any(off & np.isfinite(expected)), (name, got, expected)
                np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected), name)
            else:
                np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize(("mesh", "removed"), [(64, True), (0, False)])
def test_the_differences_own_background_is_removed(tiny_dia, mesh, removed):
    """A sky gradient left in the calexp (from -0.4 to +0.4 of the pixel noise across the
    sensor, as two independent sky estimates leave) is not the kernel's constant differential
    background: measured on the difference's blank sky, it is subtracted."""
    butler = tiny_dia.butler
    visits = butler.get("visitTable")
    row = visits[visits["obsHistID"] == 2][0]
    calexp = butler.get("calexp", visit=2).copy()
    template = butler.get("goodSeeingCoadd", filter=str(row["filter"]))
    sigma = float(np.sqrt(np.median(calexp.variance)))
    w = calexp.shape[1]
    calexp.image += np.float32(0.4 * sigma) * np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    task = ImageDifferenceTask(ImageDifferenceConfig(background_mesh=mesh))
    on_visit = task.warp_template(calexp, template)
    match = task.match_kernel(calexp, on_visit, butler.get("refcat"))
    subtraction = task.subtract(calexp, on_visit, match)
    z = subtraction.image / np.sqrt(match.var_wide + match.var_narrow)
    left, right = (
        z[:, : w // 3][subtraction.blank[:, : w // 3]],
        z[:, -w // 3 :][subtraction.blank[:, -w // 3 :]],
    )
    step = np.median(right) - np.median(left)  # 0.53 sigma injected between the thirds' centres
    # removed, what is left is the median filter's flattening of the gradient at the edges
    assert abs(step) < 0.15 if removed else step > 0.3
