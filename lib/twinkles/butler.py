"""The data repository: dataset types, data ids, paths and atomic I/O.

Named after the LSST Butler, so the names are familiar: a *dataset type* (``eimage``,
``calexp``, ``src``, ...) plus a *data id* (``visit=230``) gives one file under the repository
root. Every write goes to a temporary file in the same directory and is renamed into place, so
a product that exists is complete: a half-written file is never mistaken for a result.

Dataset types and storage formats are registries; a step that adds a product registers its
dataset type next to the code that makes it.

Under the workflow the butler also keeps the books of a notebook (module constants below):

* **what it read and wrote**: each ``get``, ``input_path`` and ``put`` appends a line to the
  file named by ``TWINKLES_IO_LOG``; the executed notebook's provenance, and the check of
  whether it must run again, come from that record, not from a declaration that can drift;
* **what the run vouches for**: ``TWINKLES_INVALID_DATASETS`` names a file the driver writes,
  the datasets of steps its run database does not call done (failed, blocked, or stale: an
  input changed since): for those ``exists`` is False and a read fails with the reason, so a
  gathering step takes what the run database calls done, never whatever files exist.

Checksums are computed once per file version and kept beside it
(``.<name>.sha256``: size, modification time, checksum), so a product read by many notebooks
is hashed once.
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
    "INVALID_ENV",
    "IO_LOG_ENV",
    "Butler",
    "DatasetType",
    "atomic_path",
    "cached_checksum",
    "file_checksum",
    "register_dataset_type",
    "register_storage",
]

#: Environment variable naming the file a notebook's reads and writes are appended to.
IO_LOG_ENV = "TWINKLES_IO_LOG"
#: Environment variable naming the driver's file of datasets the run does not vouch for.
INVALID_ENV = "TWINKLES_INVALID_DATASETS"


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
    """How one storage format is written (to a path) and read back; a storage that
    ``compresses`` takes the butler's image compression as ``write(obj, path, compression)``."""

    write: Callable[..., None]
    read: Callable[[Path], Any]
    compresses: bool = False


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


def register_storage(
    name: str,
    write: Callable[..., None],
    read: Callable[[Path], Any],
    compresses: bool = False,
) -> None:
    """Add a storage format; ``write(obj, path)`` (``write(obj, path, compression)`` if it
    ``compresses`` images) must write a complete file at ``path``."""
    _STORAGES[name] = Storage(write, read, compresses)


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


def _sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def cached_checksum(path: str | Path) -> str:
    """:func:`file_checksum`, kept beside the file for as long as its size and time hold.

    The first notebook to need a file's checksum (usually the one that wrote it) pays for
    it; the others read ``.<name>.sha256``. Writing the cache is best effort (a read-only
    folder just means hashing again).
    """
    path = Path(path)
    st = path.stat()
    stamp = f"{st.st_size} {st.st_mtime_ns}"
    side = _sidecar(path)
    try:
        cached = side.read_text().split()
        if len(cached) == 3 and f"{cached[0]} {cached[1]}" == stamp:
            return cached[2]
    except OSError:
        pass
    checksum = file_checksum(path)
    try:
        with atomic_path(side) as tmp:
            tmp.write_text(f"{stamp} {checksum}\n")
    except OSError:
        pass
    return checksum


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
    from twinkles.image import Exposure

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
import twinkles.datasets  # noqa: E402, F401
