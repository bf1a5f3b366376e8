"""Spurious DIASources sorted by cause, on a synthetic sensor where each cause is placed."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from twinkles.image import Exposure, MaskPlane
from twinkles.sim.truth import Truth, empty_light_curves
from twinkles.sim.wcs import make_wcs
from twinkles.validation.dia import ARTIFACT_CAUSES, artifact_rates, classify_artifacts

SIZE, SCALE = 512, 0.2


def _table(wcs, rows: list[dict], xy: list[tuple[float, float]]) -> Table:
    ra, dec = wcs.all_pix2world(np.array([p[0] for p in xy]), np.array([p[1] for p in xy]), 0)
    table = Table(rows=rows) if rows else Table()
    table["ra"], table["dec"] = ra, dec
    return table


@pytest.fixture
def sensor():
    wcs = make_wcs(10.0, -30.0, 0.0, SCALE, SIZE, SIZE)
    mask = np.zeros((SIZE, SIZE), dtype=np.int32)
    mask[98:103, 98:103] |= int(MaskPlane.SAT)  # the 15th-magnitude star's core
    mask[400, 50] |= int(MaskPlane.CR)
    calexp = Exposure(
        np.zeros((SIZE, SIZE), np.float32), mask, np.ones((SIZE, SIZE), np.float32), wcs
    )
    star = {"is_variable": False}
    stars = _table(
        wcs,
        [{**star, "id": k, "mag_r": m} for k, m in ((1, 15.0), (2, 18.0), (3, 22.0))],
        [(100, 100), (300, 300), (400, 120)],
    )
    galaxy = {"bulge_mag_r": np.nan, "disk_hlr": 1.0, "bulge_hlr": 0.3}
    galaxies = _table(
        wcs,
        [{**galaxy, "id": 10, "disk_mag_r": 20.0}, {**galaxy, "id": 11, "disk_mag_r": 24.0}],
        [(200, 400), (420, 420)],
    )
    supernovae = _table(wcs, [{"id": 20}], [(250, 250)])
    lensed = _table(wcs, [], [])
    lensed["id"] = np.zeros(0, dtype=int)
    truth = Truth(stars, galaxies, supernovae, Table(), lensed, Table(), empty_light_curves())
    return calexp, truth


#: One DIASource per cause (pixel position) and what it must be classified as.
PLACED = [
    ((250.5, 250.0), ""),  # the supernova: not spurious
    ((5.0, 200.0), "edge"),
    ((50.5, 400.0), "cosmic_ray"),
    ((104.0, 100.0), "saturated"),  # beside the saturated core
    ((300.5, 300.0), "bright_star"),
    ((309.0, 300.0), "bright_star"),  # 1.8" out: a ring where the PSFs' wings differ
    ((100.0, 140.0), "star_wings"),  # 8" from the 15th-magnitude star, 7.6" from its SAT
    ((202.0, 400.0), "bright_galaxy"),  # within two half-light radii of the 20th-mag galaxy
    ((420.0, 421.0), "faint_object"),  # the 24th-magnitude galaxy
    ((400.5, 120.0), "faint_object"),  # the 22nd-magnitude star
    ((480.0, 250.0), "noise"),
]


def test_each_spurious_dia_source_gets_its_cause(sensor):
    calexp, truth = sensor
    xy = np.array([p for p, _ in PLACED])
    ra, dec = calexp.wcs.all_pix2world(xy[:, 0], xy[:, 1], 0)
    n = len(PLACED)
    dia = Table(
        {
            "ra": ra,
            "decl": dec,
            "x": xy[:, 0],
            "y": xy[:, 1],
            "flag_edge": np.zeros(n, bool),
            "flag_saturated": np.zeros(n, bool),
        }
    )
    causes = classify_artifacts(dia, calexp, truth, "r", SCALE)
    assert causes.tolist() == [cause for _, cause in PLACED]
    rates = artifact_rates(causes, n_visits=2, area_deg2=0.01)
    by_cause = {row["cause"]: row for row in rates}
    assert by_cause["faint_object"]["n"] == 2 and by_cause["total"]["n"] == n - 1
    assert by_cause["noise"]["per_deg2_per_visit"] == pytest.approx(1 / 2 / 0.01)
    assert sum(by_cause[c]["n"] for c in ARTIFACT_CAUSES) == by_cause["total"]["n"]
    with pytest.raises(ValueError, match="visits and a sensor area"):
        artifact_rates(causes, n_visits=0, area_deg2=0.01)
