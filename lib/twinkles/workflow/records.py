"""The records that pass between the driver and its workers, as JSON files.

The driver writes a :class:`TaskSpec` (what one task is to run: its :class:`WorkItem` per data
id and the run's :class:`TaskCommon`); the worker writes an :class:`ItemResult` per data id as
soon as it is done, and a :class:`TaskRecord` at the end. Each is a dataclass, written
atomically and read back with its fields checked: a file that is missing, truncated or of
another shape reads as ``None``, which the driver takes for a result that never came.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from twinkles.files import atomic_path

__all__ = [
    "ItemResult",
    "TaskCommon",
    "TaskRecord",
    "TaskSpec",
    "WorkItem",
    "read_record",
    "write_record",
]

R = TypeVar("R")


@dataclass
class WorkItem:
    """One data id of a task: what to execute and where its products go."""

    step: str
    data_id: str
    """As :func:`~twinkles.workflow.spec.data_id_str` writes it (``visit=3``)."""
    recipe: str
    """The recipe notebook's path."""
    parameters: dict[str, Any]
    notebook: str
    """Where the executed notebook goes."""
    outputs: list[str]
    """Files a success must leave."""
    attempt: int
    timeout_s: float
    cwd: str
    """The run directory, the kernel's working directory."""
    result: str = ""
    """Where the worker writes this item's :class:`ItemResult` (empty: nowhere)."""


@dataclass
class TaskCommon:
    """What every item of a run shares."""

    token: str
    """The driver's token: results carrying another are a dead driver's."""
    git: dict[str, Any]
    """Commit and dirty state of the source tree."""
    versions: dict[str, str]
    """Versions of the key packages."""
    kernel_name: str = "python3"
    invalid_datasets: str = ""
    """The driver's list of datasets the run does not vouch for (empty: none)."""


@dataclass
class TaskSpec:
    """One task: several data ids of one step, run in sequence in one kernel."""

    task_id: str
    cpus: int
    kernel: str
    """``warm`` (one kernel for every item, reset between them) or ``fresh``."""
    kernel_imports: list[str]
    common: TaskCommon
    items: list[WorkItem]
    task_result: str
    """Where the worker writes its :class:`TaskRecord`."""

    def write(self, path: Path) -> None:
        """Write the spec as JSON, atomically."""
        _write(self, path)

    @classmethod
    def read(cls, path: str | Path) -> TaskSpec:
        """The spec at ``path`` (a worker's input: a bad one is an error, not None)."""
        data = json.loads(Path(path).read_text())
        return cls(
            **{
                **data,
                "common": TaskCommon(**data["common"]),
                "items": [WorkItem(**item) for item in data["items"]],
            }
        )


@dataclass
class ItemResult:
    """What one data id's execution did: also its notebook's provenance."""

    token: str
    step: str
    data_id: str
    attempt: int
    status: str
    """``done`` or ``failed``."""
    failure_class: str | None = None
    """``science`` (a recipe cell raised, or outputs are missing) or ``infrastructure``."""
    failed_cell: int | None = None
    error: str | None = None
    notebook: str | None = None
    """The executed notebook (None when none was written)."""
    host: str | None = None
    job_id: str | None = None
    start: float | None = None
    end: float | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    kernel: str | None = None
    """``warm`` or ``fresh``."""
    reads: list[dict[str, Any]] = field(default_factory=list)
    """Files read: path (relative to the run directory), dataset, data id, size, mtime,
    checksum."""
    writes: list[dict[str, Any]] = field(default_factory=list)
    """Files written, the same way."""
    traceback: str | None = None
    """For an infrastructure failure in the worker itself."""

    @property
    def ok(self) -> bool:
        """True for a success."""
        return self.status == "done"


@dataclass
class TaskRecord:
    """What a task as a whole used."""

    token: str
    task_id: str
    job_id: str | None
    host: str
    start: float
    end: float
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    kernel_starts: int
    n_items: int


def _write(record: Any, path: str | Path) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(asdict(record), indent=1, default=str))


def write_record(record: ItemResult | TaskRecord, path: str | Path) -> None:
    """Write a result or task record as JSON, atomically."""
    _write(record, path)


def read_record(cls: type[R], path: str | Path) -> R | None:
    """The record of type ``cls`` at ``path``, or None when the file is missing, not JSON or
    not of that shape (unknown keys, or required ones missing)."""
    try:
        data = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or not set(data) <= {f.name for f in fields(cls)}:
        return None
    try:
        return cls(**data)
    except TypeError:
        return None
