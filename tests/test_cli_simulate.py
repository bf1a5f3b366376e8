"""`twinkles simulate` on the tiny run: eimages with headers, reruns skip, changes refused."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

from twinkles.cli import main
from twinkles.config import load_run
from twinkles.isr.eimage import eimage_pixels

from conftest import copy_config

HEADER_KEYS = (
    "OBSID",
    "MJD-OBS",
    "FILTER",
    "EXPTIME",
    "AIRMASS",
    "ROTANG",
    "RATEL",
    "DECTEL",
    "CTYPE1",
    "CTYPE2",
    "CRPIX1",
    "CRVAL1",
    "CD1_1",
    "CD2_2",
    "SATURATE",
)


def test_one_eimage_per_visit_with_header(tiny_run):
    visits = tiny_run.butler.get("visitTable")
    assert len(visits) == 12
    for row in visits:
        # a compressed eimage (storage.compression) keeps its pixels in the first extension
        with fits.open(tiny_run.butler.path("eimage", visit=int(row["obsHistID"]))) as hdul:
            header, _ = eimage_pixels(hdul)
        for key in HEADER_KEYS:
            assert key in header, key
        assert header["OBSID"] == row["obsHistID"]
        assert header["FILTER"] == row["filter"]
        assert (header["NAXIS1"], header["NAXIS2"]) == (256, 256)


def test_tiny_sky_levels_match_the_cadence(tiny_run):
    visits = tiny_run.butler.get("visitTable")
    conditions = tiny_run.butler.get("visitConditionsTruth")
    for row, cond in zip(visits, conditions, strict=True):
        data = fits.getdata(tiny_run.butler.path("eimage", visit=int(row["obsHistID"])))
        _, median, _ = sigma_clipped_stats(data, sigma=2.5)
        # galaxies and stars lift the clipped median a little above the sky
        assert median == pytest.approx(cond["skyCounts"], rel=0.02)


def test_tiny_has_a_supernova_and_a_lensed_quasar_on_the_sensor(tiny_run):
    from twinkles.sim.sky import Sky
    from twinkles.sim.wcs import wcs_from_header_dict

    sky = Sky.read(tiny_run.butler)
    seen = {"sn": 0, "lensed": 0}
    for visit in sky.visits["obsHistID"]:
        truth = tiny_run.butler.get("eimageTruth", visit=int(visit))
        wcs = wcs_from_header_dict(truth["true_wcs"])
        for key, table in (("sn", sky.truth.supernovae), ("lensed", sky.truth.lensed_images)):
            x, y = wcs.all_world2pix(table["ra"], table["dec"], 0)
            flux = sky.truth.flux(table["id"], truth["filter"], truth["mjd"])
            snr_ok = flux * truth["electrons_per_njy"] > 5 * np.sqrt(truth["sky_level"] * 50)
            on = (x > 5) & (x < 250) & (y > 5) & (y < 250) & snr_ok
            seen[key] += int(on.any())
    assert seen["sn"] >= 3 and seen["lensed"] >= 10  # one bright-moon g visit may lose it


def test_rerun_skips_and_changed_config_is_refused(tmp_path, capsys):
    config = copy_config("tiny", tmp_path)
    assert main(["simulate", str(config), "--visits", "1", "2", "-q"]) == 0
    first = tmp_path / "tiny" / "repo" / "eimage" / "eimage_00000001.fits"
    mtime = first.stat().st_mtime_ns
    assert main(["simulate", str(config), "--visits", "1", "2", "-q"]) == 0
    out = capsys.readouterr().out
    assert "rendered 0 visits" in out and "2 already done" in out
    assert first.stat().st_mtime_ns == mtime

    config.write_text(config.read_text().replace("n_visits: 12", "n_visits: 11"))
    assert main(["simulate", str(config), "-q"]) == 2
    err = capsys.readouterr().err
    assert "changed: cadence.n_visits" in err and "--force" in err


def test_bad_config_exits_with_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("sensor:\n  width_px: many\n")
    assert main(["simulate", str(path)]) == 2
    assert "sensor.width_px" in capsys.readouterr().err


def test_unknown_visit_is_named(tmp_path, capsys):
    config = copy_config("tiny", tmp_path)
    assert main(["simulate", str(config), "--visits", "999", "-q"]) == 2
    assert "999" in capsys.readouterr().err


def test_console_script_and_run_directory(tiny_run):
    # the installed `twinkles` entry point, given the run directory instead of the YAML
    result = subprocess.run(
        [sys.executable, "-m", "twinkles.cli", "simulate", str(tiny_run.dir), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "0 visits" in result.stdout and "12 already done" in result.stdout
    assert load_run(tiny_run.dir).config == tiny_run.config


def test_twinkles_run_renders_the_tiny_run_through_the_workflow(tmp_path, capsys):
    config = copy_config("tiny", tmp_path)
    # the rendering step only: the other recipes run through the CLI in the fixtures' runs
    assert main(["run", str(config), "-q", "--steps", "simulate_visit"]) == 0
    assert "simulate_visit: 12 done" in capsys.readouterr().out
    run = load_run(config)
    notebooks = sorted((run.dir / "notebooks" / "simulate_visit").glob("visit=*.ipynb"))
    assert len(notebooks) == 12
    assert all(run.butler.exists("eimage", visit=v) for v in range(1, 13))
    assert main(["status", str(run.dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["steps"][0] == {
        "step": "simulate_visit",
        "done": 12,
        "failed": 0,
        "blocked": 0,
        "pending": 0,
        "failures": [],
    }
    assert main(["run", str(config), "-q", "--steps", "simulate_visit"]) == 0  # nothing to do
    assert "simulate_visit: 0 done, 0 failed, 0 blocked, 12 up to date" in capsys.readouterr().out
