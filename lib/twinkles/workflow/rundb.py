"""The run database: what ran, where, how long, and how it ended.

One SQLite file per run (``runs/<name>/run.db``), written only by the driver:

* ``nodes``: one row per (step, data id): state (``pending``, ``running``, ``done``,
  ``failed``, ``blocked``), attempts, job id, host, start, end, wall and CPU seconds, peak RSS,
  failure class (``science`` or ``infrastructure``), failing cell, error line, notebook path,
  the fingerprint that decides whether it must run again, the files its last successful
  execution read and wrote (``reads``, ``writes``: JSON lists of path, size, modification
  time and checksum, from the butler's record of the notebook's I/O), and the token of the
  driver that last submitted it (a resumed run keeps what that driver's tasks finished);
* ``attempts``: every execution of every data id, retries included (the cost of the run);
* ``tasks``: every task (one process or Slurm array element running several data ids in one
  kernel) with its own wall and CPU time, so CPU efficiency counts start-up and idle time;
* ``removed``: ephemeral files the driver removed once every step reading them was done
  (path relative to the run directory, dataset, checksum, the node that wrote it), so a
  removed intermediate does not make its writer or readers stale;
* ``disk``: the run directory's size on disk, sampled while the driver runs (peak disk).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "NodeRow", "RunDatabase"]

SCHEMA_VERSION = 3
#: Columns added since schema 1, with their SQL types (added in place to an older database).
_ADDED = {2: [("reads", "TEXT"), ("writes", "TEXT"), ("token", "TEXT")]}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    step TEXT NOT NULL,
    data_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    job_id TEXT,
    host TEXT,
    start REAL,
    end REAL,
    wall_s REAL,
    cpu_s REAL,
    peak_rss_mb REAL,
    failure_class TEXT,
    failed_cell INTEGER,
    error TEXT,
    notebook TEXT,
    fingerprint TEXT,
    reads TEXT,
    writes TEXT,
    token TEXT,
    PRIMARY KEY (step, data_id)
);
CREATE TABLE IF NOT EXISTS attempts (
    step TEXT NOT NULL,
    data_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    task_id TEXT,
    job_id TEXT,
    host TEXT,
    start REAL,
    end REAL,
    wall_s REAL,
    cpu_s REAL,
    peak_rss_mb REAL,
    outcome TEXT NOT NULL,
    failure_class TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    step TEXT NOT NULL,
    executor TEXT NOT NULL,
    job_id TEXT,
    host TEXT,
    n_items INTEGER NOT NULL,
    cpus INTEGER NOT NULL,
    submitted REAL,
    start REAL,
    end REAL,
    wall_s REAL,
    cpu_s REAL,
    peak_rss_mb REAL,
    kernel_starts INTEGER,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS removed (
    path TEXT PRIMARY KEY,
    dataset TEXT,
    checksum TEXT,
    size INTEGER,
    step TEXT NOT NULL,
    data_id TEXT NOT NULL,
    removed REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS disk (t REAL NOT NULL, bytes INTEGER NOT NULL);
"""

STATES = ("pending", "running", "done", "failed", "blocked")


@dataclass
class NodeRow:
    """One (step, data id) as stored."""

    step: str
    data_id: str
    state: str
    attempts: int = 0
    job_id: str | None = None
    host: str | None = None
    start: float | None = None
    end: float | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    failure_class: str | None = None
    failed_cell: int | None = None
    error: str | None = None
    notebook: str | None = None
    fingerprint: str | None = None
    reads: str | None = None
    writes: str | None = None
    token: str | None = None


_NODE_COLUMNS = [f.name for f in fields(NodeRow)]


class RunDatabase:
    """The run database at ``path`` (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(_SCHEMA)
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row["value"]) > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path} has run-database schema {row['value']}, newer than this "
                f"twinkles's {SCHEMA_VERSION}; use a new run directory or a newer twinkles"
            )
        elif int(row["value"]) < SCHEMA_VERSION:
            self._migrate(int(row["value"]))

    def _migrate(self, version: int) -> None:
        """Add the columns of the schemas after ``version`` (older rows get NULL)."""
        with self.transaction() as conn:
            have = {r["name"] for r in conn.execute("PRAGMA table_info(nodes)")}
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for name, sql_type in _ADDED.get(v, []):
                    if name not in have:
                        conn.execute(f"ALTER TABLE nodes ADD COLUMN {name} {sql_type}")
            conn.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on any
        exception.
        """
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # --- nodes ----------------------------------------------------------------------------

    def node(self, step: str, data_id: str) -> NodeRow | None:
        """The node's row, or None."""
        row = self._conn.execute(
            "SELECT * FROM nodes WHERE step = ? AND data_id = ?", (step, data_id)
        ).fetchone()
        return NodeRow(**dict(row)) if row else None

    def nodes(self, step: str | None = None) -> list[NodeRow]:
        """Every node's row (of one step if given), ordered by step and data id."""
        if step is None:
            rows = self._conn.execute("SELECT * FROM nodes ORDER BY step, data_id")
        else:
            rows = self._conn.execute(
                "SELECT * FROM nodes WHERE step = ? ORDER BY data_id", (step,)
            )
        return [NodeRow(**dict(r)) for r in rows]

    def upsert(self, rows: Iterable[NodeRow]) -> None:
        """Insert or replace node rows, in one transaction."""
        columns = ", ".join(_NODE_COLUMNS)
        placeholders = ", ".join("?" for _ in _NODE_COLUMNS)
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO nodes ({columns}) VALUES ({placeholders})",
                [tuple(getattr(r, c) for c in _NODE_COLUMNS) for r in rows],
            )

    def set_state(self, keys: Iterable[tuple[str, str]], state: str, **values: Any) -> None:
        """Set the state (one of `STATES`) and other columns of the nodes with these (step, data id)
        keys.
        """
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        assignments = ", ".join(["state = ?"] + [f"{k} = ?" for k in values])
        with self.transaction() as conn:
            conn.executemany(
                f"UPDATE nodes SET {assignments} WHERE step = ? AND data_id = ?",
                [(state, *values.values(), step, did) for step, did in keys],
            )

    # --- attempts and tasks -------------------------------------------------------------------

    def _insert(self, table: str, values: dict[str, Any], replace: bool = False) -> None:
        # column names come from this module's callers, never from user input
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        columns = ", ".join(values)
        placeholders = ", ".join("?" for _ in values)
        with self.transaction() as conn:
            conn.execute(
                f"{verb} INTO {table} ({columns}) VALUES ({placeholders})", tuple(values.values())
            )

    def record_attempt(self, **values: Any) -> None:
        """One execution of one data id."""
        self._insert("attempts", values)

    def record_task(self, **values: Any) -> None:
        """One task (process or array element) and its own wall and CPU time."""
        self._insert("tasks", values, replace=True)

    def attempts(self, step: str | None = None) -> list[dict[str, Any]]:
        """Every execution attempt (of one step if given), oldest first."""
        query, args = "SELECT * FROM attempts", ()
        if step is not None:
            query, args = query + " WHERE step = ?", (step,)
        return [dict(r) for r in self._conn.execute(query + " ORDER BY start", args)]

    def tasks(self, step: str | None = None) -> list[dict[str, Any]]:
        """Every submitted task (of one step if given), in the order submitted."""
        query, args = "SELECT * FROM tasks", ()
        if step is not None:
            query, args = query + " WHERE step = ?", (step,)
        return [dict(r) for r in self._conn.execute(query + " ORDER BY submitted", args)]

    # --- removed intermediates and disk use --------------------------------------------------

    def record_removed(self, rows: Iterable[dict[str, Any]]) -> None:
        """Files removed as ephemeral (each: path, dataset, checksum, size, step, data_id)."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO removed (path, dataset, checksum, size, step, data_id, "
                "removed) VALUES (:path, :dataset, :checksum, :size, :step, :data_id, :removed)",
                [{"removed": now(), **r} for r in rows],
            )

    def removed(self) -> dict[str, dict[str, Any]]:
        """Removed ephemeral files by path (relative to the run directory)."""
        rows = self._conn.execute("SELECT * FROM removed")
        return {r["path"]: dict(r) for r in rows}

    def set_meta(self, key: str, value: str) -> None:
        """Record a fact about the run (``key`` -> ``value``), replacing an earlier one."""
        self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        """A fact recorded with :meth:`set_meta`, or None."""
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row["value"]

    def record_disk(self, t: float, size: int) -> None:
        """One sample of the run directory's size on disk (bytes)."""
        self._insert("disk", {"t": t, "bytes": int(size)})

    def disk(self) -> list[tuple[float, int]]:
        """Every sample of the run directory's size, (time, bytes), in time order."""
        rows = self._conn.execute("SELECT t, bytes FROM disk ORDER BY t")
        return [(r["t"], r["bytes"]) for r in rows]


def now() -> float:
    """Wall-clock time stored in the database (Unix seconds)."""
    return time.time()
