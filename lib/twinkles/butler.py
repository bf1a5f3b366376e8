"""The data repository: dataset types, data ids, paths and atomic I/O.

Named after the LSST Butler, so the names are familiar: a *dataset type* (``eimage``,
``calexp``, ``src``, ...) plus a *data id* (``visit=230``) gives one file under the repository
root. Every write goes to a temporary file in the same directory and is renamed into place, so
a product that exists is complete: a half-written file is never mistaken for a result.

Dataset types and storage formats are registries; a step that adds a product registers its
dataset type next to the code that makes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from string import Formatter
from typing import Any

__all__ = [
    "Butler",
    "DatasetType",
    "atomic_path",
    "file_checksum",
    "register_dataset_type",
    "register_storage",
]


@dataclass(frozen=True)
class DatasetType:
    """A kind of product: its data-id keys, where it lives and how it is stored."""

    name: str
    dimensions: tuple[str, ...]
    template: str
    storage: str
    doc: str


@dataclass(frozen=True)
class Storage:
    """How one storage format is written (to a path) and read back."""

    write: Callable[[Any, Path], None]
    read: Callable[[Path], Any]


_DATASET_TYPES: dict[str, DatasetType] = {}
_STORAGES: dict[str, Storage] = {}


def register_dataset_type(
    name: str, dimensions: tuple[str, ...], template: str, storage: str, doc: str
) -> DatasetType:
    """Add a dataset type; ``template`` is a path relative to the repository root."""
    fields = {f for _, f, _, _ in Formatter().parse(template) if f}
    if fields != set(dimensions):
        raise ValueError(f"dataset type {name}: template fields {fields} != {set(dimensions)}")
    dstype = DatasetType(name, tuple(dimensions), template, storage, doc)
    _DATASET_TYPES[name] = dstype
    return dstype


def register_storage(name: str, write: Callable[[Any, Path], None], read: Callable[[Path], Any]):
    """Add a storage format; ``write(obj, path)`` must write a complete file at ``path``."""
    _STORAGES[name] = Storage(write, read)


def dataset_types() -> dict[str, DatasetType]:
    """Every registered dataset type, by name."""
    return dict(_DATASET_TYPES)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    On error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp's 0600 would hide the run from collaborators
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def file_checksum(path: str | Path, algorithm: str = "sha256") -> str:
    """Checksum of a file's bytes, as ``"sha256:<hex>"``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{algorithm}:{digest.hexdigest()}"


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


def _write_exposure(exposure: Any, path: Path) -> None:
    exposure.write_fits(path)


def _read_exposure(path: Path) -> Any:
    from twinkles.image import Exposure

    return Exposure.read_fits(path)


register_storage("table", _write_table, _read_table)
register_storage("exposure", _write_exposure, _read_exposure)
register_storage("json", _write_json, _read_json)
register_storage("fits", _write_fits, _read_fits)


# --- the butler ----------------------------------------------------------------------------


class Butler:
    """Read and write the products of one run under ``root`` (``runs/<name>/repo``).

    Parameters
    ----------
    root : str or Path
        Repository root; created on first write.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Butler({str(self.root)!r})"

    @staticmethod
    def dataset_type(name: str) -> DatasetType:
        """The registered dataset type called ``name``."""
        try:
            return _DATASET_TYPES[name]
        except KeyError:
            known = ", ".join(sorted(_DATASET_TYPES))
            raise KeyError(f"unknown dataset type {name!r}; known: {known}") from None

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
        """Whether the dataset has been written."""
        return self.path(name, **data_id).exists()

    def get(self, name: str, **data_id: Any) -> Any:
        """Read a dataset; ``FileNotFoundError`` names the dataset and data id if it is absent."""
        path = self.path(name, **data_id)
        if not path.exists():
            ident = ", ".join(f"{k}={v}" for k, v in data_id.items())
            raise FileNotFoundError(f"no {name} dataset ({ident or 'run-level'}) at {path}")
        return _STORAGES[self.dataset_type(name).storage].read(path)

    def put(self, obj: Any, name: str, **data_id: Any) -> Path:
        """Write a dataset atomically; returns its path."""
        path = self.path(name, **data_id)
        storage = _STORAGES[self.dataset_type(name).storage]
        with atomic_path(path) as tmp:
            storage.write(obj, tmp)
        return path

    def checksum(self, name: str, **data_id: Any) -> str:
        """Checksum of the dataset's file (for provenance)."""
        return file_checksum(self.path(name, **data_id))


# the pipeline's dataset types (imported last: it registers through the functions above)
import twinkles.datasets  # noqa: E402, F401
