"""Ephemeral intermediates and the run's disk use.

Some products are read by the next step and by nothing after it: a calexp's warp onto the
patch is read by its filter's coadd and template, a simulated eimage by process_eimage. A run
names them (``storage``: :meth:`twinkles.config.StorageConfig.ephemeral_datasets`); the
driver removes such a file once every *reader* of it is done, in this invocation or judged
up to date by it. Its readers are the dependants of the node that wrote it (the nodes of
the steps that depend on it, for that data id) whose step may read the file's dataset type
(:attr:`twinkles.workflow.spec.Step.reads`; a step that does not declare what it reads may
read anything). A reader that failed or was blocked keeps the files, so rerunning it finds
them (Snakemake's ``temp()`` outputs work the same way); a dependant that reads none of
them does not.

A removed file leaves a record in the run database (path, dataset, checksum, writer), so the
removal alone does not make its writer or readers stale: a recorded file that is missing but
was removed with the same checksum counts as unchanged. When a reader must run again for its
own reasons, the writer runs again first, and rebuilds the file.

The run directory's size on disk is sampled while the driver runs (:class:`DiskMonitor`),
every ``every_s`` seconds and after each removal: its largest value is the run's peak disk.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twinkles.workflow.rundb import NodeRow, RunDatabase

__all__ = ["DiskMonitor", "EphemeralFiles", "disk_usage"]

Key = tuple[str, str]


def disk_usage(path: str | Path) -> int:
    """Bytes that the files under ``path`` take on disk (allocated blocks, as ``du``; a
    symbolic link counts as itself, not its target)."""
    total = 0
    stack = [os.fspath(path)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:  # removed while we looked
                continue
    return total


class DiskMonitor:
    """Samples of a run directory's size on disk, into the run database.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    db : RunDatabase
        Where the samples go (table ``disk``).
    every_s : float
        Least time between samples (s); :meth:`sample` with ``force`` takes one at once.
    """

    def __init__(self, run_dir: Path, db: RunDatabase, every_s: float = 10.0):
        self.run_dir = run_dir
        self.db = db
        self.every_s = every_s
        self._last = -float("inf")

    def sample(self, force: bool = False) -> int | None:
        """Record the run directory's size now (if ``every_s`` has passed, or ``force``);
        returns it (bytes), or None if no sample was due."""
        t = time.monotonic()
        if not force and t - self._last < self.every_s:
            return None
        self._last = t
        size = disk_usage(self.run_dir)
        self.db.record_disk(time.time(), size)
        return size


class EphemeralFiles:
    """The ephemeral files of a run's done nodes: which node holds which, when they can go,
    and which writers must run again to rebuild them.

    Parameters
    ----------
    run_dir : Path
        The run directory (recorded paths are relative to it).
    db : RunDatabase
        The run database (its ``removed`` table).
    datasets : iterable of str
        The ephemeral dataset types.
    plan : dict
        Every node of the run by key (its ``deps`` give each node's dependants).
    rows : dict
        The run database's rows by key.
    """

    def __init__(
        self,
        run_dir: Path,
        db: RunDatabase,
        datasets: Iterable[str],
        plan: dict[Key, Any],
        rows: dict[Key, NodeRow],
    ):
        self.run_dir = Path(run_dir)
        self.db = db
        self.datasets = frozenset(datasets)
        self.dependants: dict[Key, list[Key]] = defaultdict(list)
        # what each node's step reads from its dependencies (None: not declared, anything)
        self.reads: dict[Key, frozenset[str] | None] = {}
        for key, node in plan.items():
            reads = node.step.reads
            self.reads[key] = None if reads is None else frozenset(reads)
            for dep in node.deps:
                self.dependants[dep].append(key)
        self.removed = db.removed()
        self.holding: dict[Key, list[dict]] = {}
        for key, row in rows.items():
            if key in plan and row.state == "done":
                self.hold(key, json.loads(row.writes or "[]"))

    def relative(self, path: str | Path) -> str:
        """A path as the run database records it (relative to the run directory)."""
        return os.path.relpath(Path(path).resolve(), self.run_dir.resolve())

    def was_removed(self, entry: dict) -> bool:
        """Whether a recorded file (path, checksum) is missing because it was removed as
        ephemeral with the same contents."""
        gone = self.removed.get(entry["path"])
        return gone is not None and gone["checksum"] == entry.get("checksum")

    def output_removed(self, path: str | Path) -> bool:
        """Whether a declared output is missing because it was removed as ephemeral."""
        return self.relative(path) in self.removed

    def hold(self, key: Key, writes: list[dict]) -> None:
        """A done node's writes: the ephemeral ones still on disk wait for its dependants."""
        if not self.datasets:
            return
        held = [
            w
            for w in writes
            if w.get("dataset") in self.datasets and (self.run_dir / w["path"]).exists()
        ]
        if held:
            self.holding[key] = held
        else:
            self.holding.pop(key, None)

    def readers(self, key: Key, dataset: str) -> list[Key]:
        """The dependants of node ``key`` that may read its files of type ``dataset``."""
        return [
            d
            for d in self.dependants.get(key, [])
            if self.reads.get(d) is None or dataset in self.reads[d]
        ]

    def release(self, state: dict[Key, str], fresh: set[Key]) -> int:
        """Remove each held file whose readers are all done (``state``: this invocation's
        nodes; ``fresh``: nodes judged up to date). A file no dependant reads is kept: what
        reads it is not known. Returns the bytes removed."""

        def done(d: Key) -> bool:
            return state.get(d) == "done" or (d not in state and d in fresh)

        freed = 0
        for key in list(self.holding):
            kept, gone = [], []
            for entry in self.holding[key]:
                readers = self.readers(key, entry.get("dataset"))
                if not readers or not all(done(d) for d in readers):
                    kept.append(entry)
                    continue
                path = self.run_dir / entry["path"]
                try:
                    st = path.stat()
                except OSError:
                    continue
                if st.st_size != entry["size"] or st.st_mtime_ns != entry["mtime_ns"]:
                    continue  # rewritten since its writer ran: not this record's to remove
                path.unlink()
                path.with_name(f".{path.name}.sha256").unlink(missing_ok=True)
                freed += st.st_blocks * 512
                gone.append(
                    {
                        "path": entry["path"],
                        "dataset": entry["dataset"],
                        "checksum": entry.get("checksum"),
                        "size": entry["size"],
                        "step": key[0],
                        "data_id": key[1],
                    }
                )
            if kept:
                self.holding[key] = kept
            else:
                del self.holding[key]
            if gone:
                self.db.record_removed(gone)
                self.removed.update({g["path"]: g for g in gone})
        return freed

    def writers_to_rerun(self, readers: Iterable[Key], rows: dict[Key, NodeRow]) -> set[Key]:
        """The writers of the removed files that these nodes (about to run again) read."""
        out: set[Key] = set()
        if not self.removed:  # nothing was removed: no reader's record needs reading
            return out
        for key in readers:
            row = rows.get(key)
            if row is None:
                continue
            for entry in json.loads(row.reads or "[]"):
                gone = self.removed.get(entry["path"])
                if gone is not None and not (self.run_dir / entry["path"]).exists():
                    out.add((gone["step"], gone["data_id"]))
        return out
