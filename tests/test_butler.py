"""The data repository: paths from data ids, atomic writes, table round trips."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from twinkles.butler import Butler
from twinkles.files import atomic_path, file_checksum


def test_path_from_data_id(tmp_path):
    butler = Butler(tmp_path)
    assert butler.path("eimage", visit=230) == tmp_path / "eimage" / "eimage_00000230.fits"


def test_wrong_data_id_is_named(tmp_path):
    butler = Butler(tmp_path)
    with pytest.raises(KeyError, match=r"missing \['visit'\], unexpected \['vist'\]"):
        butler.path("eimage", vist=1)
    with pytest.raises(KeyError, match="unknown dataset type 'eimages'"):
        butler.path("eimages", visit=1)


def test_missing_dataset_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no eimage dataset \\(visit=5\\)"):
        Butler(tmp_path).get("eimage", visit=5)


def test_table_round_trip_keeps_types_units_and_strings(tmp_path):
    butler = Butler(tmp_path)
    table = Table()
    table["id"] = np.array([1, 2], dtype=np.int64)
    table["ra"] = [53.0, 53.1]
    table["ra"].unit = "deg"
    table["filter"] = ["g", "r"]
    table["flag"] = [True, False]
    table.meta["note"] = "hello"
    butler.put(table, "visitTable")
    back = butler.get("visitTable")
    assert back["id"].dtype == np.int64
    assert str(back["ra"].unit) == "deg"
    assert list(back["filter"]) == ["g", "r"]
    assert back["flag"].dtype == bool
    assert back.meta["note"] == "hello"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "product.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_whole(tmp_path):
    target = tmp_path / "product.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert file_checksum(target).startswith("sha256:")
