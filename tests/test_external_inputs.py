"""Inputs from elsewhere: eimage ingest, the reference and truth catalog formats, and a run of a
scene made with GalSim directly (examples/external_scene.py, no twinkles.sim) end to end.

The bad-input table of the issue "Bring your own sky": a truncated eimage, a missing key, a
bad FILTER, a repeated OBSID, a reference catalog without ``ra`` or without a band, an empty
catalog, magnitudes that are fluxes, truth rows whose ids match nothing; each is refused or
flagged by name, and nothing else is lost or rerun.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from twinkles.config import ConfigError, load_run, parse_run_config
from twinkles.inputs.eimages import find_eimages, ingest_eimages, night_numbers
from twinkles.inputs.refcat import (
    ReferenceCatalogError,
    check_reference_catalog,
    load_reference_catalog,
)
from twinkles.inputs.source import MixedInputsError, prepare_inputs, prepare_run_dir
from twinkles.inputs.tables import read_catalog
from twinkles.inputs.truth import TruthCatalogError, load_external_truth
from twinkles.sim.truth import Truth
from twinkles.units import mag_to_njy

REPO = Path(__file__).resolve().parents[1]


# --- eimages ----------------------------------------------------------------------------------


def write_eimage(path: Path, visit: int, band: str = "r", mjd: float = 60300.1, **header):
    """A small eimage following docs/eimage-format.md: sky noise and one star."""
    rng = np.random.default_rng(visit)
    data = rng.poisson(800.0, (64, 64)).astype(np.float32)
    data[30:33, 30:33] += 5000.0
    h = fits.Header()
    cards = {
        "OBSID": visit,
        "MJD-OBS": mjd,
        "FILTER": band,
        "EXPTIME": 30.0,
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRPIX1": 32.5,
        "CRPIX2": 32.5,
        "CRVAL1": 9.45,
        "CRVAL2": -44.0,
        "CD1_1": -0.2 / 3600,
        "CD1_2": 0.0,
        "CD2_1": 0.0,
        "CD2_2": 0.2 / 3600,
    }
    cards.update(header)
    for key, value in cards.items():
        if value is not None:
            h[key] = value
    fits.PrimaryHDU(data, header=h).writeto(path, overwrite=True)
    return path


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for k, band in enumerate("grig"):
        write_eimage(folder / f"good_{k}.fits", 101 + k, band, 60300.1 + k)
    return folder


def _ingest(files, previous=None, repo=None, mode="symlink"):
    repo = repo or files[0].parent.parent / "repo"
    return ingest_eimages(
        files, previous or {}, lambda v: repo / f"eimage_{v:08d}.fits", mode
    ), repo


def test_bad_eimages_are_refused_by_name_and_the_good_ones_go_on(image_dir: Path):
    good = sorted(image_dir.glob("good_*.fits"))
    truncated = image_dir / "truncated.fits"
    data = write_eimage(image_dir / "tmp.fits", 201).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    (image_dir / "tmp.fits").unlink()
    write_eimage(image_dir / "no_filter.fits", 202, FILTER=None)
    write_eimage(image_dir / "bad_filter.fits", 203, band="H")
    clash_a = write_eimage(image_dir / "clash_a.fits", 300, mjd=60310.1)
    clash_b = write_eimage(image_dir / "clash_b.fits", 300, mjd=60311.1)
    twin = image_dir / "twin_of_good_0.fits"
    shutil.copy(good[0], twin)
    files, unmatched = find_eimages([str(image_dir)], image_dir.parent)
    assert not unmatched and len(files) == len(good) + 6
    result, repo = _ingest(files)

    refused = {Path(p).name: why for p, why in result.refused.items()}
    assert "not a readable FITS file" in refused["truncated.fits"]
    assert "lacks header keys FILTER" in refused["no_filter.fits"]
    assert "FILTER 'H' is not one of" in refused["bad_filter.fits"]
    # a repeated OBSID names both files, and neither is used
    for name in ("clash_a.fits", "clash_b.fits"):
        assert "OBSID 300" in refused[name]
        assert str(clash_a) in refused[name] and str(clash_b) in refused[name]
    # the same image twice is ingested once
    assert "the same image as" in refused[twin.name]
    assert sorted(r.visit for r in result.records) == [101, 102, 103, 104]
    for record in result.records:
        link = repo / f"eimage_{record.visit:08d}.fits"
        assert link.is_symlink() and Path(record.path).samefile(link)
    # again: idempotent, nothing re-read (records reused while size and time hold)
    previous = {r.path: r.__dict__ for r in result.records}
    again, _ = _ingest(files, previous, repo)
    assert again.ingested == [] and sorted(again.unchanged) == sorted(
        r.path for r in result.records
    )
    assert again.refused == result.refused


def test_ingest_copies_and_never_writes_the_user_file(image_dir: Path):
    files = sorted(image_dir.glob("*.fits"))
    before = {p: p.read_bytes() for p in files}
    result, repo = _ingest(files, mode="copy")
    for record in result.records:
        copy = repo / f"eimage_{record.visit:08d}.fits"
        assert not copy.is_symlink() and copy.read_bytes() == before[Path(record.path)]
        copy.write_bytes(b"changed by the pipeline")  # the copy is ours
    assert {p: p.read_bytes() for p in files} == before


def test_nights_count_from_local_noon_at_the_site():
    # Cerro Pachon: local noon is at 16:43 UTC; 23:00 and 03:00 UTC fall in one night
    mjd = np.array([60300.0 + 23 / 24, 60301.0 + 3 / 24, 60301.0 + 23 / 24, 60665.9])
    assert night_numbers(mjd, -70.7494, None).tolist() == [0, 0, 1, 365]


# --- reference catalog ------------------------------------------------------------------------


def canonical_refcat(n: int = 20) -> Table:
    rng = np.random.default_rng(1)
    t = Table()
    t["id"] = np.arange(n, dtype=np.int64)
    t["ra"] = 9.45 + rng.uniform(-0.01, 0.01, n)
    t["dec"] = -44.0 + rng.uniform(-0.01, 0.01, n)
    for b in "gri":
        t[f"{b}_mag"] = rng.uniform(16, 22, n)
        t[f"{b}_magErr"] = np.full(n, 0.01)
    return t


@pytest.mark.parametrize("suffix", [".parquet", ".fits"])
def test_reference_catalog_is_read_and_defaults_filled(tmp_path: Path, suffix: str):
    path = tmp_path / f"ref{suffix}"
    canonical_refcat().write(path)
    ref = load_reference_catalog(path, ["g", "r"])
    check_reference_catalog(ref, ["g", "r"])
    assert not ref["resolved"].any() and not ref["variable"].any()
    assert np.all(np.isnan(ref["coord_err"]))
    assert "i_mag" not in ref.colnames  # only the run's bands


def test_reference_catalog_column_map(tmp_path: Path):
    t = canonical_refcat()
    t.rename_columns(["id", "ra", "dec"], ["source_id", "coord_ra", "coord_dec"])
    for b in "gri":
        t.rename_column(f"{b}_mag", f"mag_{b}")
        t.rename_column(f"{b}_magErr", f"mag_{b}_err")
    t["is_extended"] = np.arange(len(t)) % 2 == 0
    t.write(tmp_path / "ref.parquet")
    columns = {
        "id": "source_id",
        "ra": "coord_ra",
        "dec": "coord_dec",
        "{band}_mag": "mag_{band}",
        "{band}_magErr": "mag_{band}_err",
        "resolved": "is_extended",
    }
    ref = load_reference_catalog(tmp_path / "ref.parquet", ["g", "r", "i"], columns)
    assert ref["resolved"].sum() == 10 and np.allclose(ref["r_mag"], t["mag_r"])
    with pytest.raises(ReferenceCatalogError, match="names 'coord_ra2' for 'ra'"):
        load_reference_catalog(tmp_path / "ref.parquet", ["r"], {**columns, "ra": "coord_ra2"})


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: t.remove_column("ra"), r"ref.parquet: no column 'ra'"),
        (lambda t: t.remove_column("i_mag"), r"no column 'i_mag': the run observes band i"),
        (lambda t: t.remove_rows(slice(None)), r"ref.parquet: the catalog is empty"),
        (
            lambda t: t.__setitem__("r_mag", 10 ** (-0.4 * (t["r_mag"] - 31.4))),
            r"column 'r_mag' has a median of .*: fluxes, not AB magnitudes",
        ),
        (lambda t: t.__setitem__("id", np.zeros(len(t), np.int64)), r"column 'id' repeats"),
        (lambda t: t.__setitem__("dec", t["dec"] - 100), r"must be degrees"),
    ],
)
def test_bad_reference_catalogs_are_refused_naming_file_and_column(tmp_path, damage, message):
    t = canonical_refcat()
    damage(t)
    t.write(tmp_path / "ref.parquet")
    with pytest.raises(ReferenceCatalogError, match=message):
        load_reference_catalog(tmp_path / "ref.parquet", ["g", "r", "i"])


def test_the_simulated_reference_catalog_follows_the_format(tiny_run):
    check_reference_catalog(tiny_run.butler.get("refcat"), "ugrizy", "tiny refcat")


# --- truth catalog ----------------------------------------------------------------------------


def truth_files(tmp_path: Path, orphan: bool = False) -> tuple[Path, Path]:
    objects = Table()
    objects["id"] = np.array([7, 8, 9, 10], dtype=np.int64)
    objects["ra"] = [9.45, 9.46, 9.47, 9.471]
    objects["dec"] = [-44.0, -44.01, -44.02, -44.02]
    objects["kind"] = ["star", "galaxy", "variable_star", "supernova"]
    for b in "gr":
        objects[f"{b}_mag"] = [18.0, 20.0, 19.0, np.nan]
    objects["host_id"] = [-1, -1, -1, 8]
    curves = Table()
    ids = [9, 9, 10, 10, 10, 9, 10, 10] + ([99] if orphan else [])
    curves["id"] = np.array(ids, dtype=np.int64)
    curves["mjd"] = [60300.0, 60310.0, 60300.0, 60310.0, 60320.0, 60300.0, 60300.0, 60320.0] + (
        [60300.0] if orphan else []
    )
    curves["band"] = ["r", "r", "r", "r", "r", "g", "g", "g"] + (["r"] if orphan else [])
    curves["flux"] = [1000.0, 3000.0, 0.0, 5000.0, 1000.0, 800.0, 0.0, 100.0] + (
        [1.0] if orphan else []
    )
    objects.write(tmp_path / "objects.parquet")
    curves.write(tmp_path / "curves.fits")
    return tmp_path / "objects.parquet", tmp_path / "curves.fits"


def test_truth_catalog_gives_fluxes_from_magnitudes_and_light_curves(tmp_path: Path):
    loaded = load_external_truth(*truth_files(tmp_path), ["g", "r"])
    truth = loaded.truth
    assert loaded.flagged == []
    # the static star from its magnitude; the galaxy too (one component)
    assert truth.flux(7, "r", 60305.0)[0] == pytest.approx(mag_to_njy(18.0))
    assert truth.flux(8, "g", 60305.0)[0] == pytest.approx(mag_to_njy(20.0))
    # light curves: linear in time, held beyond the ends
    assert truth.flux([9, 10, 10], "r", [60305.0, 60305.0, 60400.0]).tolist() == pytest.approx(
        [2000.0, 2500.0, 1000.0]
    )
    assert truth.kinds([7, 8, 9, 10]).tolist() == [1, 2, 1, 3]
    assert sorted(truth.variable_ids().tolist()) == [9, 10]
    assert int(truth.supernovae["host_id"][0]) == 8


def test_truth_rows_whose_ids_match_nothing_are_flagged(tmp_path: Path):
    loaded = load_external_truth(*truth_files(tmp_path, orphan=True), ["g", "r"])
    assert len(loaded.flagged) == 1 and "[99]" in loaded.flagged[0]
    assert 99 not in loaded.truth.light_curves["id"]


def test_a_variable_object_needs_a_light_curve_in_every_band(tmp_path: Path):
    objects, curves = truth_files(tmp_path)
    objects_table = read_catalog(objects, "truth objects")
    objects_table["i_mag"] = [18.0, 20.0, 19.0, np.nan]
    objects_table.write(objects, overwrite=True)
    with pytest.raises(TruthCatalogError, match=r"no rows for 2 variable .*9 \(i\), 10 \(i\)"):
        load_external_truth(objects, curves, ["g", "r", "i"])
    with pytest.raises(TruthCatalogError, match="but no light curves"):
        load_external_truth(objects, None, ["g", "r"])


def test_bad_truth_catalogs_are_refused(tmp_path: Path):
    objects, curves = truth_files(tmp_path)
    table = read_catalog(objects, "truth objects")
    table["kind"][0] = "quasar"
    table.write(objects, overwrite=True)
    with pytest.raises(TruthCatalogError, match=r"column 'kind' has \['quasar'\]"):
        load_external_truth(objects, curves, ["r"])
    table["kind"][0] = "star"
    table.remove_column("r_mag")
    table.write(objects, overwrite=True)
    with pytest.raises(TruthCatalogError, match="no column 'r_mag': the run observes band r"):
        load_external_truth(objects, curves, ["r"])


# --- the run configuration and the run directory ----------------------------------------------


def test_external_configuration_is_checked():
    with pytest.raises(ConfigError, match=r"inputs\.eimages: an external run needs"):
        parse_run_config({"inputs": {"source": "external", "refcat": "r.fits"}}, "x", "x")
    with pytest.raises(ConfigError, match=r"inputs\.refcat: only for source: external"):
        parse_run_config({"inputs": {"refcat": "r.fits"}}, "x", "x")


def test_a_run_directory_of_the_other_kind_is_refused(tmp_path: Path, image_dir: Path):
    canonical_refcat().write(tmp_path / "ref.parquet")
    (tmp_path / "ext.yaml").write_text(
        yaml.safe_dump(
            {"inputs": {"source": "external", "eimages": ["images"], "refcat": "ref.parquet"}}
        )
    )
    run = load_run(tmp_path / "ext.yaml")
    report = prepare_inputs(run)
    assert any("4 visits" in line for line in report.lines)
    visits = run.butler.get("visitTable")
    assert visits["obsHistID"].tolist() == [101, 102, 103, 104]
    assert visits["filter"].tolist() == list("grig")
    assert np.allclose(visits["pixelScale"], 0.2)
    assert run.pixel_scale == pytest.approx(0.2)
    # the same directory as a simulated run: refused, and nothing simulated into it
    (tmp_path / "ext.yaml").write_text(yaml.safe_dump({"seed": 3}))
    with pytest.raises(MixedInputsError, match="holds external inputs"):
        prepare_run_dir(load_run(tmp_path / "ext.yaml"))
    assert not run.butler.exists("skyFingerprint")


def test_twinkles_simulate_refuses_an_external_run(tmp_path: Path):
    from twinkles.cli import main

    (tmp_path / "ext.yaml").write_text(
        yaml.safe_dump({"inputs": {"source": "external", "eimages": ["x"], "refcat": "r.fits"}})
    )
    assert main(["simulate", str(tmp_path / "ext.yaml")]) == 2
    assert not (tmp_path / "ext").exists()


# --- a scene made with GalSim directly, through `twinkles run` --------------------------------


def _scene_module():
    spec = importlib.util.spec_from_file_location(
        "external_scene", REPO / "examples" / "external_scene.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _checksums(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def external_run(tmp_path_factory: pytest.TempPathFactory):
    """The tiny external scene through every recipe, from runs/external.yaml."""
    from twinkles.workflow.driver import run_pipeline

    root = tmp_path_factory.mktemp("external")
    scene = _scene_module()
    scene.write_scene(root / "external_sky", scene.PRESETS["tiny"], 7, 9.45, -44.0)
    before = _checksums(root / "external_sky")
    config = yaml.safe_load((REPO / "runs" / "external.yaml").read_text())
    config["executor"]["figure_every"] = 1000  # figures of the first visit of each step only
    (root / "external.yaml").write_text(yaml.safe_dump(config))
    run = load_run(root / "external.yaml")
    summary = run_pipeline(run, progress=False)
    assert summary.ok, summary.lines()
    return run, before, summary


@pytest.mark.slow
def test_external_scene_runs_every_recipe_and_leaves_the_inputs_untouched(external_run):
    run, before, summary = external_run
    assert "simulate_visit" not in summary.counts
    assert summary.counts["process_eimage"]["done"] == 12
    assert summary.notes[0].startswith("eimages: 12 visits (12 ingested")
    assert _checksums(run.config_path.parent / "external_sky") == before
    for visit in run.butler.get("visitTable")["obsHistID"]:
        assert run.butler.path("eimage", visit=int(visit)).is_symlink()


@pytest.mark.slow
def test_external_scene_is_scored_against_its_own_truth(external_run):
    from twinkles.validation.metrics import read_metrics

    run, _, _ = external_run
    metrics = read_metrics(run.dir / "validation" / "metrics.json")["by_name"]
    for name in (
        "PA1_validate_drp_r",
        "object_completeness",
        "transient_recovery",
        "difference_noise_ratio_min",
    ):
        assert metrics[name]["value"] is not None, name
    assert any(m["value"] is not None for n, m in metrics.items() if n.startswith("sn_pull_std_"))
    assert (
        metrics["lensed_image_recovery"]["verdict"] == "not measured: no lensed quasar in the truth"
    )
    # the transients the scene drew were found
    assert metrics["transient_recovery"]["value"] >= 0.5


@pytest.mark.slow
def test_external_scene_note_says_where_the_images_came_from(external_run):
    run, _, _ = external_run
    # as a user builds it, in a process of its own (Sphinx registers its nodes once a process)
    proc = subprocess.run(
        [sys.executable, "-m", "twinkles.cli", "note", str(run.dir), "--no-pdf"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "were not simulated by twinkles" in (run.dir / "note" / "index.html").read_text()


@pytest.mark.slow
def test_a_bad_eimage_added_later_is_refused_and_nothing_reruns(external_run, tmp_path):
    from twinkles.workflow.driver import run_pipeline

    run, _, _ = external_run
    folder = run.config_path.parent / "external_sky" / "eimages"
    bad = write_eimage(folder / "zz_bad.fits", 5000, band="H")
    try:
        summary = run_pipeline(run, steps=["process_eimage"], progress=False)
    finally:
        bad.unlink()
    assert summary.ok
    assert summary.counts["process_eimage"] == {"skipped": 12}
    assert any("refused" in line and "zz_bad.fits" in line for line in summary.notes)


@pytest.mark.slow
def test_external_run_without_a_truth_measures_what_needs_none(external_run, tmp_path):
    from twinkles.validation.metrics import read_metrics
    from twinkles.workflow.driver import run_pipeline

    run, _, _ = external_run
    root = tmp_path / "runs"
    shutil.copytree(run.config_path.parent, root, symlinks=True)
    config = yaml.safe_load((root / "external.yaml").read_text())
    del config["inputs"]["truth_objects"], config["inputs"]["truth_light_curves"]
    (root / "external.yaml").write_text(yaml.safe_dump(config))
    (root / "external" / "config.yaml").unlink()
    notruth = load_run(root / "external.yaml")
    steps = ["validate_static_sky", "validate_dia", "validate_run", "monitor_lightcurves"]
    summary = run_pipeline(notruth, steps=steps, force=True, progress=False)
    assert summary.ok, summary.lines()
    assert not Truth.exists(notruth.butler)
    metrics = read_metrics(notruth.dir / "validation" / "metrics.json")["by_name"]
    # without a truth the stars are the Objects the coadd measured as point sources; in this
    # crowded scene the coadd's stellar locus of concentration is fragile, so a band may
    # hold fewer than 3 of S/N >= 50: then it says so
    drp = metrics["PA1_validate_drp_r"]
    assert drp["value"] is not None or re.fullmatch(
        r"not measured: \d stars of median S/N >= 50 \(needs 3\)", drp["verdict"]
    ), drp
    assert metrics["difference_noise_ratio_max"]["value"] is not None
    for name in ("object_completeness", "transient_recovery", "forced_pull_std_r", "sn_pull_std_r"):
        assert metrics[name]["verdict"] == "not measured: no truth", name
