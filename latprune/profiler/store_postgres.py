"""The profile store on a PostgreSQL server: one store for a team's fleet of devices.

``postgresql://user[:password]@host:port/dbname`` (libpq's URL; the password may also come
from ``PGPASSWORD`` or ``~/.pgpass``). Needs psycopg 3 (``pip install "latprune[postgres]"``).
The tables are the SQLite store's; every write is one transaction in autocommit mode, so a
profiler killed midway loses at most the round it was timing. Creating or migrating the
tables holds a transaction-scoped advisory lock, so many machines may open a new database at
once. Fitted performance models are kept in the database (``perf_fits``), in the same
code-free format as the files beside a SQLite store.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from latprune.errors import LatpruneError
from latprune.profiler.store import ProfileStore, _Write
from latprune.profiler.store_schema import SCHEMA_VERSION, statements

CONNECT_TIMEOUT_S = int(float(os.environ.get("LATPRUNE_DB_TIMEOUT_S", "30")))
_MIGRATION_LOCK = 0x6C617470  # pg_advisory_xact_lock key ("latp")


def redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def _sql(text: str) -> str:
    """The queries are written with SQLite's ``?`` placeholders (none contains a literal ``?`` or ``%``)."""
    return text.replace("?", "%s")


class PostgresStore(ProfileStore):
    """Timings in a PostgreSQL database."""

    def __init__(self, location: str, readonly: bool = False):
        super().__init__(location, readonly)
        self.location = redacted(location)
        try:
            import psycopg
        except ImportError:
            raise LatpruneError(f"{self.location} is a PostgreSQL store, which needs psycopg: "
                                'pip install "latprune[postgres]"') from None
        self._errors = psycopg.Error
        try:
            self._conn = psycopg.connect(location, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise self._error(exc, "cannot connect to") from None
        try:
            self._check_schema()
            if not readonly:
                self._migrate()
        except psycopg.Error as exc:
            self._conn.close()
            raise self._error(exc) from None
        except BaseException:
            self._conn.close()
            raise

    def _error(self, exc: Exception, what: str = "error from") -> LatpruneError:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return LatpruneError(f"profile database {self.location}: {what} the server: {text}")

    def close(self) -> None:
        self._conn.close()

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._conn.execute(_sql(sql), params).fetchall()
        except self._errors as exc:
            raise self._error(exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[_Write]:
        try:
            with self._conn.transaction():
                yield _Write(lambda sql, params=(): self._conn.execute(_sql(sql), params))
        except self._errors as exc:
            raise self._error(exc) from None

    def _table_names(self) -> set[str]:
        rows = self._conn.execute("SELECT table_name FROM information_schema.tables "
                                  "WHERE table_schema = current_schema()").fetchall()
        return {r[0] for r in rows}

    def _migrate(self) -> None:
        with self._transaction() as tx:
            tx.run("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            if "meta" in self._table_names():  # another machine may have created or migrated it meanwhile
                version = tx.run("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                if version and int(version[0]) >= SCHEMA_VERSION:
                    return
            for statement in statements("postgres"):
                tx.run(statement)
            tx.run("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = "
                   "excluded.value", (str(SCHEMA_VERSION),))

    # -------------------------------------------------------------- fits: a table of the database

    def fit_source(self, device: str, backend: str) -> str:
        return f"{self.location} (perf_fits {device} {backend})"

    def read_fit(self, device: str, backend: str) -> bytes | None:
        rows = self._read("SELECT data FROM perf_fits WHERE fingerprint = ? AND backend = ?", (device, backend))
        return bytes(rows[0][0]) if rows else None

    def write_fit(self, device: str, backend: str, data: bytes) -> None:
        with self._transaction() as tx:
            tx.run("INSERT INTO perf_fits VALUES (?,?,?,?) ON CONFLICT (fingerprint, backend) DO UPDATE SET "
                   "data = excluded.data, created = excluded.created", (device, backend, data, time.time()))
