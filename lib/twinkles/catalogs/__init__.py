"""The catalog database: LSST-schema tables, bulk idempotent ingest, light-curve queries.

- :mod:`~twinkles.catalogs.schema`: the tables (SQLAlchemy Core) and the schema version.
- :mod:`~twinkles.catalogs.database`: connecting, schema checks, bulk inserts (COPY on
  PostgreSQL, executemany on SQLite).
- :mod:`~twinkles.catalogs.ingest`: :class:`IngestTask`, a run's catalogs in, one
  transaction per visit.
- :mod:`~twinkles.catalogs.queries`: light curves, cone searches, the visit table.
"""

from twinkles.catalogs.database import CatalogDatabase, DatabaseError, SchemaVersionError
from twinkles.catalogs.ingest import IngestConfig, IngestResult, IngestTask
from twinkles.catalogs.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "CatalogDatabase",
    "DatabaseError",
    "IngestConfig",
    "IngestResult",
    "IngestTask",
    "SchemaVersionError",
]
