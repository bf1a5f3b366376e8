"""A run's inputs: the simulated sky, or files brought from elsewhere, and their guard.

:func:`prepare_inputs` is the first thing ``twinkles run`` does. For a simulated run it
makes (once) the sky: cadence, truth and reference catalog (:func:`twinkles.sim.sky.ensure_sky`).
For an external run it ingests (:func:`ingest_external`): the eimages are checked and linked
or copied into the repository (:mod:`twinkles.inputs.eimages`), the visit table is made from
their headers, the reference catalog and the optional truth are checked and stored in the
canonical form the recipes read; the manifest (``repo/inputs/manifest.json``) records every
user file with its checksum. A run directory holding inputs of the other kind is refused.

User files are read-only to the pipeline: nothing writes them (links are replaced, never
written through), and :func:`verify_inputs`, run at the end of ``twinkles run``, checks that
each still has the checksum recorded at ingest (re-reading only the files whose size or
modification time changed).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from twinkles.config import Run
from twinkles.errors import TwinklesError
from twinkles.files import atomic_path, file_checksum
from twinkles.inputs.eimages import (
    find_eimages,
    ingest_eimages,
    visit_table_from_headers,
)
from twinkles.inputs.refcat import load_reference_catalog
from twinkles.inputs.truth import load_external_truth
from twinkles.sim.sky import ensure_sky
from twinkles.sim.truth import TRUTH_DATASETS, Truth

__all__ = [
    "InputsReport",
    "MixedInputsError",
    "ingest_external",
    "prepare_inputs",
    "prepare_run_dir",
    "verify_inputs",
]

_PATH_KEYS = ("refcat", "truth_objects", "truth_light_curves")


class MixedInputsError(TwinklesError):
    """A run directory that holds inputs of the other kind (simulated vs external)."""


@dataclass
class InputsReport:
    """What preparing a run's inputs did, in lines a person reads."""

    lines: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)


def _config_text(run: Run) -> str:
    """The configuration as kept in the run directory: input paths made absolute, so the
    copy means the same files wherever it is read from."""
    data = run.config.model_dump(mode="json")
    inputs = data["inputs"]
    if run.external:
        inputs["eimages"] = [str(run.input_path(p)) for p in inputs["eimages"]]
        for key in _PATH_KEYS:
            if inputs[key]:
                inputs[key] = str(run.input_path(inputs[key]))
    return yaml.safe_dump(data, sort_keys=False)


def prepare_run_dir(run: Run) -> None:
    """Create the run directory and keep a copy of its configuration there.

    Raises
    ------
    MixedInputsError
        The directory holds a simulated sky and the run is external, or the reverse.
    """
    butler = run.butler
    if run.external and butler.exists("skyFingerprint"):
        raise MixedInputsError(
            f"{run.dir} holds a simulated sky, and {run.config_path} brings external images "
            f"(inputs.source: external): use a new run name, or remove {run.dir}"
        )
    if not run.external and butler.exists("inputManifest"):
        raise MixedInputsError(
            f"{run.dir} holds external inputs (its {butler.path('inputManifest').name}), and "
            f"{run.config_path} simulates its sky: use a new run name, or set "
            f"inputs.source: external"
        )
    run.dir.mkdir(parents=True, exist_ok=True)
    copy = run.dir / "config.yaml"
    text = _config_text(run)
    if copy.resolve() != Path(run.config_path).resolve() and (
        not copy.exists() or copy.read_text() != text
    ):
        with atomic_path(copy) as tmp:
            tmp.write_text(text)


def prepare_inputs(run: Run) -> InputsReport:
    """Make the simulated sky or ingest the external inputs (module docstring)."""
    prepare_run_dir(run)
    if run.external:
        return ingest_external(run)
    ensure_sky(run)
    return InputsReport()


def _stat_unchanged(entry: dict[str, Any] | None, path: Path) -> bool:
    """Whether ``path`` is the file ``entry`` recorded, of the same size and time."""
    if not entry or entry.get("path") != str(path):
        return False
    try:
        st = path.stat()
    except OSError:
        return False
    return entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns


def _file_entry(path: Path, previous: dict[str, Any] | None) -> dict[str, Any]:
    """A user file's manifest entry; its checksum is reused while size and time hold."""
    if _stat_unchanged(previous, path):
        return previous
    st = path.stat()
    return {
        "path": str(path),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "checksum": file_checksum(path),
    }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ingest_external(run: Run) -> InputsReport:
    """Ingest an external run's eimages, reference catalog and truth (module docstring).

    Products made from the user's files are rewritten only when those files (or the
    column maps) change, so an unchanged ingest leaves every product, and so every
    processed visit, as it was.

    Raises
    ------
    TwinklesError
        No usable eimage; a reference catalog or truth catalog that cannot be used (the
        message names the file and the column).
    """
    cfg = run.config.inputs
    butler = run.butler
    old = butler.get("inputManifest") if butler.exists("inputManifest") else {}
    report = InputsReport()
    files, unmatched = find_eimages(cfg.eimages, run.config_path.parent)
    report.lines += [f"inputs.eimages {p}" for p in unmatched]
    images = ingest_eimages(
        files,
        old.get("eimages", {}),
        lambda visit: butler.path("eimage", visit=visit),
        cfg.link,
    )
    visits = {r.visit for r in images.records}
    for entry in old.get("eimages", {}).values():
        gone = entry.get("visit")
        if gone is not None and gone not in visits and butler.exists("eimage", visit=gone):
            butler.path("eimage", visit=gone).unlink()
            images.removed.append(gone)
    report.lines += images.lines()
    report.refused = dict(images.refused)
    if not images.records:
        raise TwinklesError(
            f"{run.config_path}: no usable eimage among {len(files)} file(s) of inputs.eimages"
            + "".join(f"\n  {path}: {why}" for path, why in images.refused.items())
        )
    bands = sorted({r.filter for r in images.records})

    table = visit_table_from_headers(images.records, cfg.site_longitude, cfg.survey_start_mjd)
    manifest: dict[str, Any] = {
        "source": "external",
        "eimages": {r.path: asdict(r) for r in images.records},
        "refused": images.refused,
        "link": cfg.link,
    }
    visit_key = _digest([manifest["eimages"], cfg.site_longitude, cfg.survey_start_mjd])
    if old.get("visit_table_key") != visit_key or not butler.exists("visitTable"):
        butler.put(table, "visitTable")
    manifest["visit_table_key"] = visit_key

    refcat_path = run.input_path(cfg.refcat)
    manifest["refcat"] = _file_entry(refcat_path, old.get("refcat"))
    refcat_key = _digest([manifest["refcat"]["checksum"], cfg.refcat_columns, bands])
    if old.get("refcat_key") != refcat_key or not butler.exists("refcat"):
        refcat = load_reference_catalog(refcat_path, bands, cfg.refcat_columns)
        butler.put(refcat, "refcat")
        report.lines.append(f"reference catalog: {len(refcat)} objects from {refcat_path}")
    manifest["refcat_key"] = refcat_key

    if cfg.truth_objects:
        objects_path = run.input_path(cfg.truth_objects)
        curves_path = run.input_path(cfg.truth_light_curves) if cfg.truth_light_curves else None
        manifest["truth_objects"] = _file_entry(objects_path, old.get("truth_objects"))
        if curves_path is not None:
            manifest["truth_light_curves"] = _file_entry(curves_path, old.get("truth_light_curves"))
        truth_key = _digest(
            [
                manifest["truth_objects"]["checksum"],
                manifest.get("truth_light_curves", {}).get("checksum"),
                cfg.truth_columns,
                bands,
            ]
        )
        if old.get("truth_key") != truth_key or not Truth.exists(butler):
            loaded = load_external_truth(objects_path, curves_path, bands, cfg.truth_columns)
            loaded.truth.write(butler)
            manifest["truth_flagged"] = loaded.flagged
            report.lines.append(
                f"truth: {len(loaded.truth.stars)} stars, {len(loaded.truth.galaxies)} "
                f"galaxies, {len(loaded.truth.supernovae)} transients from {objects_path}"
            )
        else:
            manifest["truth_flagged"] = old.get("truth_flagged", [])
        manifest["truth_key"] = truth_key
        report.lines += [f"truth: {f}" for f in manifest["truth_flagged"]]
    else:
        _remove_truth(butler)
        report.lines.append("truth: none given; validation measures what needs no truth")
    if manifest != old:
        butler.put(manifest, "inputManifest")
    return report


def _remove_truth(butler) -> None:
    """Truth tables left by an earlier ingest whose configuration named a truth."""
    for dataset in TRUTH_DATASETS.values():
        if butler.exists(dataset):
            butler.path(dataset).unlink()


def user_files(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Every user file an ingest recorded: eimages, reference catalog, truth."""
    entries = list(manifest.get("eimages", {}).values())
    entries += [manifest[k] for k in ("refcat", *_PATH_KEYS[1:]) if k in manifest]
    return entries


def verify_inputs(run: Run) -> list[str]:
    """The user files that changed since they were ingested (one line each); empty if none.

    A file whose size and modification time are those recorded is taken as unchanged (the
    pipeline never opens a user file for writing); any other is read and its checksum
    compared with the one recorded.
    """
    butler = run.butler
    if not run.external or not butler.exists("inputManifest"):
        return []
    problems = []
    for entry in user_files(butler.get("inputManifest")):
        path = Path(entry["path"])
        if not path.exists():
            problems.append(f"{path}: ingested, and now gone")
            continue
        if not _stat_unchanged(entry, path) and file_checksum(path) != entry["checksum"]:
            problems.append(f"{path}: changed since it was ingested (checksum differs)")
    return problems
