"""Ingest eimages from any simulator, as LSST's ``butler ingest-raws`` ingests raws.

:func:`find_eimages` expands the run's ``inputs.eimages`` (directories and globs);
:func:`inspect_eimage` checks one file against ``docs/eimage-format.md`` (readable, not
truncated, a 2-d image with usable pixels, every required header key of the right type) and
returns what the visit table needs from its header; :func:`ingest_eimages` checks every file
before any processing, refuses the bad ones by name and key (a repeated ``OBSID`` names both
files), links or copies the good ones into the repository and records each file's checksum.
Ingesting again is idempotent: a file whose size and modification time are those recorded is
not read again.

:func:`visit_table_from_headers` makes the run's visit table from the headers: ``obsHistID``
(``OBSID``), ``expMJD``, ``filter``, ``visitExpTime``, ``airmass``, ``rotSkyPos``,
``fieldRA``/``fieldDec`` (the nominal pointing), ``pixelScale``, and ``night`` and ``year``
(``night // 365``) counted from the survey's first night, so seasons and data-release splits
work as for a simulated run. What only processing measures (``FWHMeff``,
``fiveSigmaDepth``) is NaN.
"""

from __future__ import annotations

import glob
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.utils.exceptions import AstropyUserWarning

from twinkles.files import file_checksum
from twinkles.isr.eimage import eimage_header_problems, eimage_pixels

__all__ = [
    "EimageRecord",
    "ImageIngest",
    "find_eimages",
    "ingest_eimages",
    "inspect_eimage",
    "link_file",
    "night_numbers",
    "visit_table_from_headers",
]

_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fits.fz", ".fit.fz")


@dataclass
class EimageRecord:
    """One eimage file as ingested: where it is, its checksum, and its header's facts."""

    path: str
    size: int
    mtime_ns: int
    checksum: str
    visit: int
    filter: str
    mjd: float
    exptime: float
    airmass: float
    rot_sky_pos: float
    ra: float
    dec: float
    pixel_scale: float
    width: int
    height: int

    def unchanged(self, path: Path) -> bool:
        """Whether ``path`` still has the size and modification time recorded."""
        try:
            st = path.stat()
        except OSError:
            return False
        return st.st_size == self.size and st.st_mtime_ns == self.mtime_ns


@dataclass
class ImageIngest:
    """What :func:`ingest_eimages` did."""

    records: list[EimageRecord]
    ingested: list[str]
    unchanged: list[str]
    refused: dict[str, str]
    removed: list[int]

    def lines(self) -> list[str]:
        """What the ingest did, as terminal lines: counts, then each refused file and why."""
        out = [
            f"eimages: {len(self.records)} visits ({len(self.ingested)} ingested, "
            f"{len(self.unchanged)} unchanged), {len(self.refused)} refused"
        ]
        out += [f"  refused {path}: {why}" for path, why in self.refused.items()]
        if self.removed:
            out.append(f"  visits whose eimage is gone, removed: {self.removed}")
        return out


def find_eimages(patterns: list[str], base: Path) -> tuple[list[Path], list[str]]:
    """The eimage files named by ``patterns`` (directories or globs, relative to ``base``).

    Returns the files (absolute, sorted, each once) and a problem per pattern that matched
    nothing.
    """
    files: set[Path] = set()
    problems = []
    for pattern in patterns:
        path = base / Path(pattern).expanduser()
        if path.is_dir():
            found = [p for p in path.iterdir() if p.name.lower().endswith(_SUFFIXES)]
        else:
            found = [Path(p) for p in glob.glob(str(path)) if Path(p).is_file()]
        if not found:
            problems.append(f"{pattern}: no eimage file (*.fits, *.fits.gz, *.fits.fz) there")
        files.update(p.resolve() for p in found)
    return sorted(files), problems


def inspect_eimage(path: Path) -> tuple[EimageRecord | None, str | None]:
    """Check one eimage file; (its record, None) or (None, why it is refused)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # a truncated file only warns
            with fits.open(path, memmap=False) as hdul:
                header, data = eimage_pixels(hdul)
    except (OSError, ValueError, TypeError, IndexError, AstropyUserWarning) as exc:
        return None, f"not a readable FITS file ({exc})"
    if data is None or data.ndim != 2:
        return None, "no 2-d image in the primary HDU or first extension"
    problems = eimage_header_problems(header)
    if problems:
        return None, "; ".join(problems)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(data)
    if not finite.any():
        return None, "every pixel is NaN or infinite"
    if not np.count_nonzero(data[finite]):
        return None, "every pixel is zero"
    cd = np.array([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]])
    st = path.stat()
    record = EimageRecord(
        path=str(path),
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        checksum=file_checksum(path),
        visit=int(header["OBSID"]),
        filter=str(header["FILTER"]).strip(),
        mjd=float(header["MJD-OBS"]),
        exptime=float(header["EXPTIME"]),
        airmass=float(header.get("AIRMASS", np.nan)),
        # rotSkyPos from the CD matrix, s [[-cos r, sin r], [sin r, cos r]] (the format page)
        rot_sky_pos=float(header.get("ROTANG", np.rad2deg(np.arctan2(cd[0, 1], cd[1, 1])) % 360.0)),
        ra=float(header.get("RATEL", header["CRVAL1"])),
        dec=float(header.get("DECTEL", header["CRVAL2"])),
        pixel_scale=float(np.sqrt(abs(np.linalg.det(cd))) * 3600.0),
        width=int(data.shape[1]),
        height=int(data.shape[0]),
    )
    return record, None


def link_file(source: Path, target: Path, mode: str) -> None:
    """Put ``source`` at ``target`` as a symbolic link, a copy or a hard link, atomically.

    The source is never opened for writing; ``target`` is replaced in one rename, so a
    reader never sees a half-made file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    if tmp.exists() or tmp.is_symlink():
        tmp.unlink()
    try:
        if mode == "symlink":
            os.symlink(source, tmp)
        elif mode == "hardlink":
            try:
                os.link(source, tmp)
            except OSError as exc:
                raise OSError(
                    f"cannot hard-link {source} into {target.parent} ({exc.strerror}); "
                    f"use inputs.link: symlink or copy"
                ) from None
        elif mode == "copy":
            shutil.copyfile(source, tmp)
        else:
            raise ValueError(f"unknown link mode {mode!r}")
        os.replace(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()


def _links_to(target: Path, record: EimageRecord, mode: str) -> bool:
    """Whether ``target`` is already what ingesting ``record`` in ``mode`` would make."""
    if mode == "symlink":
        return target.is_symlink() and os.readlink(target) == record.path
    if not target.exists() or target.is_symlink():
        return False
    if mode == "hardlink":
        return os.path.samefile(target, record.path)
    st = target.stat()  # a copy: same size, and not older than the source
    return st.st_size == record.size and st.st_mtime_ns >= record.mtime_ns


def ingest_eimages(
    files: list[Path],
    previous: dict[str, dict[str, Any]],
    target_of: Any,
    mode: str,
) -> ImageIngest:
    """Check every file, then link or copy the good ones to ``target_of(visit)``.

    Parameters
    ----------
    files : list of Path
        The candidate eimage files (absolute).
    previous : dict
        Records of the last ingest, by path (``EimageRecord`` fields): a file still of that
        size and modification time is not read again.
    target_of : callable
        ``visit -> Path`` in the repository.
    mode : str
        ``symlink``, ``copy`` or ``hardlink``.

    Returns
    -------
    ImageIngest
        The records of the visits now in the repository and what was refused, by path.
    """
    candidates: list[EimageRecord] = []
    refused: dict[str, str] = {}
    unchanged_paths = set()
    for path in files:
        old = previous.get(str(path))
        if old is not None and "visit" in old:
            record = EimageRecord(**old)
            if record.unchanged(path):
                candidates.append(record)
                unchanged_paths.add(record.path)
                continue
        record, why = inspect_eimage(path)
        if record is None:
            refused[str(path)] = why
        else:
            candidates.append(record)
    by_visit: dict[int, list[EimageRecord]] = {}
    for record in candidates:
        by_visit.setdefault(record.visit, []).append(record)
    records = []
    for visit, group in sorted(by_visit.items()):
        if len(group) == 1:
            records.append(group[0])
            continue
        checksums = {r.checksum for r in group}
        if len(checksums) == 1:  # the same image twice: keep the first path
            group.sort(key=lambda r: r.path)
            records.append(group[0])
            for r in group[1:]:
                refused[r.path] = f"the same image as {group[0].path} (OBSID {visit}); left out"
            continue
        names = ", ".join(r.path for r in group)
        for r in group:
            refused[r.path] = f"OBSID {visit} is also the OBSID of another file ({names})"
    ingested, unchanged = [], []
    for record in records:
        target = target_of(record.visit)
        if _links_to(target, record, mode):
            unchanged.append(record.path)
            continue
        link_file(Path(record.path), target, mode)
        (unchanged if record.path in unchanged_paths else ingested).append(record.path)
    return ImageIngest(records, ingested, unchanged, refused, [])


def night_numbers(mjd: np.ndarray, site_longitude: float, start_mjd: float | None) -> np.ndarray:
    """Night of each MJD from the survey's first night (a night runs local noon to noon)."""
    local_day = np.floor(np.asarray(mjd, dtype=float) + site_longitude / 360.0 - 0.5)
    first = (
        np.floor(start_mjd + site_longitude / 360.0 - 0.5)
        if start_mjd is not None
        else local_day.min()
    )
    return (local_day - first).astype(np.int64)


def visit_table_from_headers(
    records: list[EimageRecord], site_longitude: float, start_mjd: float | None
) -> Table:
    """The run's visit table from the ingested eimages' headers (module docstring)."""
    records = sorted(records, key=lambda r: (r.mjd, r.visit))
    table = Table()
    table["obsHistID"] = np.array([r.visit for r in records], dtype=np.int64)
    table["expMJD"] = np.array([r.mjd for r in records], dtype=float)
    night = night_numbers(table["expMJD"], site_longitude, start_mjd)
    table["night"] = night
    table["year"] = night // 365
    table["filter"] = np.array([r.filter for r in records], dtype="U1")
    table["visitExpTime"] = np.array([r.exptime for r in records], dtype=float)
    table["airmass"] = np.array([r.airmass for r in records], dtype=float)
    table["rotSkyPos"] = np.array([r.rot_sky_pos for r in records], dtype=float)
    table["fieldRA"] = np.array([r.ra for r in records], dtype=float)
    table["fieldDec"] = np.array([r.dec for r in records], dtype=float)
    table["pixelScale"] = np.array([r.pixel_scale for r in records], dtype=float)
    table["FWHMeff"] = np.full(len(records), np.nan)
    table["fiveSigmaDepth"] = np.full(len(records), np.nan)
    for column, unit in (
        ("expMJD", "d"),
        ("visitExpTime", "s"),
        ("rotSkyPos", "deg"),
        ("fieldRA", "deg"),
        ("fieldDec", "deg"),
        ("pixelScale", "arcsec"),
    ):
        table[column].unit = unit
    table.meta["source"] = "external eimage headers"
    return table
