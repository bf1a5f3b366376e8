"""The data repository: dataset types, data ids, paths and atomic I/O.

Named after the LSST Butler, so the names are familiar: a *dataset type* (``eimage``,
``calexp``, ``src``, ...) plus a *data id* (``visit=230``) gives one file under the repository
root. Every write goes to a temporary file in the same directory and is renamed into place, so
a product that exists is complete: a half-written file is never mistaken for a result.

Dataset types are registered in :mod:`twinkles.datasets`, storage formats here; files are
written atomically and identified by checksum (:mod:`twinkles.files`).

Under the workflow the butler also keeps the books of a notebook (module constants below):

* **what it read and wrote**: each ``get``, ``input_path`` and ``put`` appends a line to the
  file named by ``TWINKLES_IO_LOG``; the executed notebook's provenance, and the check of
  whether it must run again, come from that record, not from a declaration that can drift;
* **what the run vouches for**: ``TWINKLES_INVALID_DATASETS`` names a file the driver writes,
  the datasets of steps its run database does not call done (failed, blocked, or stale: an
  input changed since): for those ``exists`` is False and a read fails with the reason, so a
  gathering step takes what the run database calls done, never whatever files exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinkles.datasets import DatasetType, dataset_type
from twinkles.files import INVALID_ENV, IO_LOG_ENV, atomic_path, file_checksum
from twinkles.image import Exposure

__all__ = ["Butler", "register_storage"]


@dataclass(frozen=True)
class Storage:
    """How one storage format is written (to a path) and read back; a storage that
    ``compresses`` takes the butler's image compression as ``write(obj, path, compression)``."""

    write: Callable[..., None]
    read: Callable[[Path], Any]
    compresses: bool = False


_STORAGES: dict[str, Storage] = {}


def register_storage(
    name: str,
    write: Callable[..., None],
    read: Callable[[Path], Any],
    compresses: bool = False,
) -> None:
    """Add a storage format; ``write(obj, path)`` (``write(obj, path, compression)`` if it
    ``compresses`` images) must write a complete file at ``path``."""
    _STORAGES[name] = Storage(write, read, compresses)


def _record_io(kind: str, name: str, data_id: dict[str, Any], path: Path) -> None:
    """Append a read or write to the notebook's I/O record (under the workflow only)."""
    target = os.environ.get(IO_LOG_ENV)
    if not target:
        return
    line = json.dumps(
        {"io": kind, "dataset": name, "data_id": data_id, "path": str(path)}, default=str
    )
    with open(target, "a") as f:
        f.write(line + "\n")


_INVALID_CACHE: dict[str, tuple[int, dict[str, str]]] = {}


def invalid_datasets() -> dict[str, str]:
    """Paths the run does not vouch for, with the reason (empty outside the workflow)."""
    target = os.environ.get(INVALID_ENV)
    if not target:
        return {}
    try:
        mtime = os.stat(target).st_mtime_ns
    except OSError:
        return {}
    cached = _INVALID_CACHE.get(target)
    if cached is None or cached[0] != mtime:
        try:
            cached = (mtime, json.loads(Path(target).read_text()))
        except (OSError, json.JSONDecodeError):
            cached = (mtime, {})
        _INVALID_CACHE[target] = cached
    return cached[1]


# --- storage formats ---------------------------------------------------------------------


def _write_table(table: Any, path: Path) -> None:
    """Parquet via pyarrow; column units go into the field metadata (no pandas needed)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from astropy.table import Table

    table = Table(table)
    fields, arrays = [], []
    for name in table.colnames:
        col = table[name]
        values = np.asarray(col)
        if values.ndim != 1:
            raise ValueError(f"table column {name!r} is not one-dimensional")
        array = pa.array(values.tolist() if values.dtype.kind in "US" else values)
        meta = {"unit": col.unit.to_string()} if col.unit is not None else None
        fields.append(pa.field(name, array.type, metadata=meta))
        arrays.append(array)
    schema = pa.schema(
        fields, metadata={"twinkles.meta": json.dumps(dict(table.meta), default=str)}
    )
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


def _read_table(path: Path) -> Any:
    import numpy as np
    import pyarrow.parquet as pq
    from astropy.table import Column, Table

    arrow = pq.read_table(path)
    table = Table()
    for field in arrow.schema:
        values = arrow.column(field.name).to_numpy(zero_copy_only=False)
        if values.dtype == object:
            values = np.asarray(values.tolist(), dtype=str)
        unit = (field.metadata or {}).get(b"unit")
        table[field.name] = Column(values, unit=unit.decode() if unit else None)
    meta = (arrow.schema.metadata or {}).get(b"twinkles.meta")
    if meta:
        table.meta.update(json.loads(meta))
    return table


def _write_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store {type(obj).__name__} as JSON")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_fits(hdulist: Any, path: Path) -> None:
    hdulist.writeto(path, overwrite=True, output_verify="exception")


def _read_fits(path: Path) -> Any:
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        hdul.verify("exception")
        copy = fits.HDUList([hdu.copy() for hdu in hdul])
    return copy


def _write_exposure(exposure: Any, path: Path, compression: Any) -> None:
    exposure.write_fits(path, compression)


def _read_exposure(path: Path) -> Any:
    return Exposure.read_fits(path)


register_storage("table", _write_table, _read_table)
register_storage("exposure", _write_exposure, _read_exposure, compresses=True)
register_storage("json", _write_json, _read_json)
register_storage("fits", _write_fits, _read_fits)


# --- the butler ----------------------------------------------------------------------------


class Butler:
    """Read and write the products of one run under ``root`` (``runs/<name>/repo``).

    Parameters
    ----------
    root : str or Path
        Repository root; created on first write.
    compression : ImageCompression, optional
        How images are compressed on disk (:mod:`twinkles.image.compression`); None writes
        plain FITS. Readers take either.
    """

    def __init__(self, root: str | Path, compression: Any = None):
        self.root = Path(root)
        self.compression = compression

    def __repr__(self) -> str:
        return f"Butler({str(self.root)!r})"

    @staticmethod
    def dataset_type(name: str) -> DatasetType:
        """The registered dataset type called ``name``."""
        return dataset_type(name)

    def path(self, name: str, **data_id: Any) -> Path:
        """Where the dataset ``name`` with this data id lives."""
        dstype = self.dataset_type(name)
        given, wanted = set(data_id), set(dstype.dimensions)
        if given != wanted:
            missing, extra = sorted(wanted - given), sorted(given - wanted)
            raise KeyError(
                f"dataset {name} is identified by {sorted(wanted)}; "
                f"missing {missing}, unexpected {extra}"
            )
        return self.root / dstype.template.format(**data_id)

    def exists(self, name: str, **data_id: Any) -> bool:
        """Whether the dataset has been written (and, under the workflow, the run vouches
        for it: see the module docstring)."""
        path = self.path(name, **data_id)
        return path.exists() and str(path) not in invalid_datasets()

    def why_missing(self, name: str, **data_id: Any) -> str | None:
        """Why the dataset cannot be read (None if it can): absent, or why the run does not
        vouch for it (its step failed, was blocked, or is stale)."""
        path = self.path(name, **data_id)
        invalid = invalid_datasets().get(str(path))
        if invalid is not None:
            return invalid
        return None if path.exists() else "not written"

    def input_path(self, name: str, **data_id: Any) -> Path:
        """The path of a dataset this notebook reads with a reader of its own (a header-only
        read, a streamed coadd): recorded as read, as ``get`` is.

        Raises
        ------
        FileNotFoundError
            Naming the dataset and why it cannot be read.
        """
        path = self.path(name, **data_id)
        ident = ", ".join(f"{k}={v}" for k, v in data_id.items()) or "run-level"
        if not path.exists():
            raise FileNotFoundError(f"no {name} dataset ({ident}) at {path}")
        invalid = invalid_datasets().get(str(path))
        if invalid is not None:
            raise FileNotFoundError(f"no usable {name} dataset ({ident}): {invalid}")
        _record_io("read", name, data_id, path)
        return path

    def get(self, name: str, **data_id: Any) -> Any:
        """Read a dataset; ``FileNotFoundError`` names the dataset and data id if it is absent
        (or the run does not vouch for it)."""
        path = self.input_path(name, **data_id)
        return _STORAGES[self.dataset_type(name).storage].read(path)

    def put(self, obj: Any, name: str, **data_id: Any) -> Path:
        """Write a dataset atomically; returns its path."""
        path = self.path(name, **data_id)
        storage = _STORAGES[self.dataset_type(name).storage]
        with atomic_path(path) as tmp:
            if storage.compresses:
                storage.write(obj, tmp, self.compression)
            else:
                storage.write(obj, tmp)
        _record_io("write", name, data_id, path)
        return path

    def checksum(self, name: str, **data_id: Any) -> str:
        """Checksum of the dataset's file (for provenance)."""
        return file_checksum(self.path(name, **data_id))


# the pipeline's dataset types (imported last: it registers through the functions above)
