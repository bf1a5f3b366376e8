"""Files a run keeps: written atomically, identified by checksum.

Every product is written to a temporary file in its own directory and renamed into place, so
a file that exists is complete. Checksums (``"sha256:<hex>"``) identify file versions in the
provenance record; each is computed once per version and kept beside the file
(``.<name>.sha256``: size, modification time, checksum), so a product read by many notebooks
is hashed once.

The workflow and the butler keep a notebook's books through two environment variables, named
here so that neither has to import the other.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["INVALID_ENV", "IO_LOG_ENV", "atomic_path", "cached_checksum", "file_checksum"]

#: Environment variable naming the file a notebook's reads and writes are appended to.
IO_LOG_ENV = "TWINKLES_IO_LOG"
#: Environment variable naming the driver's file of datasets the run does not vouch for.
INVALID_ENV = "TWINKLES_INVALID_DATASETS"


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
