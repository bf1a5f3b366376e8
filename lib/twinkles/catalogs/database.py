"""Connecting to the catalog database, checking its schema, and bulk inserts.

SQLite (embedded, the default: ``runs/<name>/catalogs.db``) and PostgreSQL (a shared server,
``postgresql+psycopg://user@host:port/db``) are supported and tested. Bulk inserts use what
each is fastest at: PostgreSQL's binary ``COPY`` built from numpy arrays (no per-value Python
work), and one ``executemany`` of tuples in a transaction on SQLite. Every statement binds its
values; no value is ever formatted into SQL text.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Table, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.types import BigInteger, Boolean, Float, Integer, String, Text

from twinkles.catalogs.schema import (
    SCHEMA_VERSION,
    metadata,
    run_table,
    schema_version_table,
)
from twinkles.errors import TwinklesError

__all__ = [
    "SUPPORTED_DIALECTS",
    "CatalogDatabase",
    "DatabaseError",
    "SchemaVersionError",
    "bulk_insert",
    "default_url",
]

SUPPORTED_DIALECTS = ("sqlite", "postgresql")


class DatabaseError(TwinklesError):
    """The catalog database cannot be used (bad URL, unreachable server, foreign schema)."""


class SchemaVersionError(DatabaseError):
    """The database was written by another schema version; it is left untouched."""


def default_url(run_dir: str | Path) -> str:
    """The embedded default: SQLite at ``runs/<name>/catalogs.db``."""
    return f"sqlite:///{Path(run_dir).resolve() / 'catalogs.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not block the ingest; NORMAL: a crash loses at most the last commit,
    # never consistency.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class CatalogDatabase:
    """A catalog database: an engine whose schema has been checked.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path/catalogs.db`` or
        ``postgresql+psycopg://user@host:port/database``.
    create : bool
        Create the tables if the database is empty (ingest does; queries do not).

    Raises
    ------
    DatabaseError
        The URL cannot be parsed, names an unsupported database, or the server cannot be
        reached; the message names the URL (password hidden).
    SchemaVersionError
        The database holds tables of another schema version, or tables that are not ours.
    """

    def __init__(self, url: str, create: bool = True):
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise DatabaseError(f"database URL {url!r} cannot be parsed: {exc}") from None
        self.display_url = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() not in SUPPORTED_DIALECTS:
            raise DatabaseError(
                f"database URL {self.display_url}: {parsed.get_backend_name()!r} is not "
                f"supported; use one of {', '.join(SUPPORTED_DIALECTS)}"
            )
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            parent = Path(parsed.database).parent
            if not parent.is_dir():
                raise DatabaseError(
                    f"database URL {self.display_url}: directory {parent} does not exist"
                )
        try:
            self.engine: Engine = create_engine(parsed, pool_pre_ping=True)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise DatabaseError(f"database URL {self.display_url}: {exc}") from None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            with self.engine.connect() as conn:
                self._check_schema(conn, create)
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise DatabaseError(
                f"cannot connect to the catalog database {self.display_url}: {reason}"
            ) from None

    def __repr__(self) -> str:
        return f"CatalogDatabase({self.display_url!r})"

    @classmethod
    def for_run(cls, run: Any, url: str | None = None, create: bool = True) -> CatalogDatabase:
        """The database of ``run``: ``url`` if given, else the run config's ``database.url``,
        else SQLite at ``runs/<name>/catalogs.db``."""
        url = url or run.config.database.url or default_url(run.dir)
        if url.startswith("sqlite"):
            run.dir.mkdir(parents=True, exist_ok=True)
        return cls(url, create=create)

    @property
    def dialect(self) -> str:
        """The SQLAlchemy dialect's name (``sqlite`` or ``postgresql``)."""
        return self.engine.dialect.name

    def _check_schema(self, conn: Connection, create: bool) -> None:
        present = set(inspect(conn).get_table_names())
        ours = {t.name for t in metadata.sorted_tables}
        if schema_version_table.name in present:
            row = conn.execute(
                select(schema_version_table.c.version).where(
                    schema_version_table.c.name == "twinkles"
                )
            ).first()
            found = None if row is None else int(row[0])
            if found != SCHEMA_VERSION:
                raise SchemaVersionError(
                    f"the catalog database {self.display_url} has schema version {found}; this "
                    f"twinkles writes version {SCHEMA_VERSION}. Use a new database (another "
                    "--db-url or delete catalogs.db) or ingest with the matching version."
                )
            if ours - present and create:
                metadata.create_all(conn)
                conn.commit()
            return
        clash = sorted(present & ours)
        if clash:
            raise SchemaVersionError(
                f"the catalog database {self.display_url} has tables {clash} but no "
                "SchemaVersion: it was not written by twinkles; refusing to touch it"
            )
        if not create:
            raise DatabaseError(
                f"the catalog database {self.display_url} is empty: ingest a run first "
                "(twinkles ingest RUN_DIR)"
            )
        metadata.create_all(conn)
        conn.execute(schema_version_table.insert().values(name="twinkles", version=SCHEMA_VERSION))
        conn.commit()

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A connection in one transaction: committed on success, rolled back on error."""
        with self.engine.begin() as conn:
            yield conn

    def run_id(self, run_name: str, config_text: str | None = None, create: bool = False) -> int:
        """The ``runId`` of ``run_name``; created (with its config) when ``create``.

        Raises ``KeyError`` naming the run and the runs the database holds if it is absent.
        """
        with self.begin() as conn:
            row = conn.execute(
                select(run_table.c.runId).where(run_table.c.runName == run_name)
            ).first()
            if row is not None:
                if create and config_text is not None:
                    conn.execute(
                        run_table.update()
                        .where(run_table.c.runId == row[0])
                        .values(config=config_text)
                    )
                return int(row[0])
            if not create:
                names = [r[0] for r in conn.execute(select(run_table.c.runName))]
                raise KeyError(
                    f"run {run_name!r} is not in the catalog database {self.display_url} "
                    f"(it holds: {', '.join(names) or 'no runs'})"
                )
            result = conn.execute(run_table.insert().values(runName=run_name, config=config_text))
            return int(result.inserted_primary_key[0])

    def dispose(self) -> None:
        """Close every pooled connection of the engine."""
        self.engine.dispose()


# --- bulk insert -----------------------------------------------------------------------------


def _column_array(table: Table, name: str, values: Any, n: int) -> np.ndarray:
    """``values`` as the numpy array the column's type wants (NaN / None for missing)."""
    ctype = table.c[name].type
    if values is None:
        if isinstance(ctype, Float):
            return np.full(n, np.nan)
        return np.full(n, None, dtype=object)
    arr = values
    if np.ma.isMaskedArray(arr):
        mask = np.ma.getmaskarray(arr)
        if isinstance(ctype, Float):
            arr = np.ma.filled(arr.astype(float), np.nan)
        else:
            out = np.asarray(np.ma.getdata(arr)).astype(object)
            out[mask] = None
            return out
    arr = np.asarray(arr)
    if len(arr) != n:
        raise ValueError(f"column {table.name}.{name} has {len(arr)} values, expected {n}")
    if arr.dtype == object and not isinstance(ctype, Float | String | Text):
        return arr  # Python values with None for NULL (e.g. a host id only some rows have)
    if isinstance(ctype, Float):
        return arr.astype(np.float64, copy=False)
    if isinstance(ctype, BigInteger | Integer):
        if arr.dtype.kind not in "iub":
            raise ValueError(f"column {table.name}.{name} must be integer, got {arr.dtype}")
        return arr.astype(np.int64, copy=False)
    if isinstance(ctype, Boolean):
        return arr.astype(bool, copy=False)
    if isinstance(ctype, String | Text):
        return arr.astype(str).astype(object)
    raise TypeError(f"column {table.name}.{name}: unhandled type {ctype!r}")


def bulk_insert(
    conn: Connection, table: Table, columns: Mapping[str, Any], chunk_rows: int = 200_000
) -> int:
    """Insert rows given as columns into ``table``, in the caller's transaction.

    Parameters
    ----------
    conn : Connection
        A connection inside a transaction (:meth:`CatalogDatabase.begin`).
    table : Table
        One of :data:`~twinkles.catalogs.schema.CATALOG_TABLES`.
    columns : mapping
        Column name -> array of values (equal lengths). Columns of the table not given are
        NULL; a name that is not a column of the table is an error. Float NaN is stored as
        NULL.
    chunk_rows : int
        Rows per COPY buffer or executemany call (bounds the memory of the conversion).

    Returns
    -------
    int
        Rows inserted.
    """
    unknown = sorted(set(columns) - set(table.c.keys()))
    if unknown:
        raise ValueError(f"table {table.name} has no columns {unknown}")
    lengths = {len(np.asarray(v)) for v in columns.values() if v is not None}
    if len(lengths) > 1:
        raise ValueError(f"columns for {table.name} have different lengths {sorted(lengths)}")
    n = lengths.pop() if lengths else 0
    if n == 0:
        return 0
    names = list(table.c.keys())
    arrays = [_column_array(table, name, columns.get(name), n) for name in names]
    for start in range(0, n, chunk_rows):
        part = [a[start : start + chunk_rows] for a in arrays]
        if conn.dialect.name == "postgresql":
            _copy_postgres(conn, table, names, part)
        else:
            _executemany(conn, table, names, part)
    return n


def _executemany(conn: Connection, table: Table, names: list[str], arrays: list) -> None:
    quote = conn.dialect.identifier_preparer.quote
    placeholders = ", ".join("?" for _ in names)
    sql = (
        f"INSERT INTO {quote(table.name)} ({', '.join(quote(n) for n in names)}) "
        f"VALUES ({placeholders})"
    )
    # tolist() turns numpy scalars into Python ones in C; NaN floats become NULL in SQLite
    rows = list(zip(*(a.tolist() for a in arrays), strict=True))
    conn.exec_driver_sql(sql, rows)


# PostgreSQL binary COPY: a signature, flags, extension length; each row a field count and
# (length, bytes) per field, length -1 for NULL; a -1 trailer. Fixed-width types only here.
_PG_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_PG_TRAILER = struct.pack(">h", -1)
_PG_DTYPES = {"f": ">f8", "i": ">i8", "b": "?"}


def _pg_binary(table: Table, arrays: list[np.ndarray]) -> bytes:
    """Rows in PostgreSQL's binary COPY format, assembled with numpy.

    Rows are grouped by which of their fields are NULL (NaN floats): within a group every row
    has the same layout, so one structured array writes the whole group. Row order does not
    matter to a table.
    """
    n = len(arrays[0])
    kinds = []
    for name in table.c.keys():
        ctype = table.c[name].type
        if isinstance(ctype, Float):
            kinds.append("f")
        elif isinstance(ctype, BigInteger):
            kinds.append("i")
        elif isinstance(ctype, Integer):
            kinds.append("i4")
        elif isinstance(ctype, Boolean):
            kinds.append("b")
        else:
            raise TypeError(f"{table.name}.{name} is not fixed-width")
    nulls = np.zeros((n, len(arrays)), dtype=bool)
    for k, (kind, arr) in enumerate(zip(kinds, arrays, strict=True)):
        if kind == "f":
            nulls[:, k] = np.isnan(arr)
        elif arr.dtype == object:  # a column the source does not have, or masked values
            nulls[:, k] = np.equal(arr, None)
    # one integer code per row from the columns that have any NULL (sorting codes is ~100x
    # faster than np.unique over rows of the boolean matrix)
    nullable = np.flatnonzero(nulls.any(axis=0))
    if len(nullable) <= 63:
        weights = np.left_shift(np.uint64(1), np.arange(len(nullable), dtype=np.uint64))
        codes = (nulls[:, nullable].astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
        _, first, group = np.unique(codes, return_index=True, return_inverse=True)
        patterns = nulls[first]
    else:
        patterns, group = np.unique(nulls, axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(patterns) + 1))
    chunks = []
    for g, pattern in enumerate(patterns):
        rows = order[bounds[g] : bounds[g + 1]]
        fields = [("n", ">i2")]
        for k, kind in enumerate(kinds):
            fields.append((f"l{k}", ">i4"))
            if not pattern[k]:
                fields.append((f"v{k}", ">i4" if kind == "i4" else _PG_DTYPES[kind]))
        out = np.empty(len(rows), dtype=np.dtype(fields))
        out["n"] = len(kinds)
        for k, arr in enumerate(arrays):
            if pattern[k]:
                out[f"l{k}"] = -1
            else:
                out[f"l{k}"] = out.dtype[f"v{k}"].itemsize
                out[f"v{k}"] = arr[rows]
        chunks.append(out.tobytes())
    return b"".join(chunks)


def _copy_postgres(conn: Connection, table: Table, names: list[str], arrays: list) -> None:
    raw = conn.connection.driver_connection
    columns = ", ".join(conn.dialect.identifier_preparer.quote(n) for n in names)
    target = conn.dialect.identifier_preparer.quote(table.name)
    fixed = all(isinstance(table.c[n].type, Float | BigInteger | Integer | Boolean) for n in names)
    with raw.cursor() as cursor:
        if fixed:
            with cursor.copy(f"COPY {target} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(_PG_HEADER)
                copy.write(_pg_binary(table, arrays))
                copy.write(_PG_TRAILER)
        else:
            with cursor.copy(f"COPY {target} ({columns}) FROM STDIN") as copy:
                for row in zip(*(a.tolist() for a in arrays), strict=True):
                    copy.write_row(
                        tuple(None if isinstance(v, float) and v != v else v for v in row)
                    )
