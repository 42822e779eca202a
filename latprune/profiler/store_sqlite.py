"""The profile store in one SQLite file (the default).

WAL mode with a busy timeout, so several profilers of one machine can share the file; every
write is a ``BEGIN IMMEDIATE`` transaction. Fitted performance models are kept beside the
file (``<file>.perfmodels/``), as they always were.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latprune.errors import LatpruneError
from latprune.outputs import atomic_path
from latprune.profiler.store import ProfileStore, _Write, default_db_path
from latprune.profiler.store_schema import SCHEMA_VERSION, statements

# How long a locked database is waited for before giving up with a clear message.
LOCK_TIMEOUT_S = float(os.environ.get("LATPRUNE_DB_TIMEOUT_S", "30"))


def fit_path(db: str | os.PathLike, device: str, backend: str) -> Path:
    """The file holding the fit of ``device`` (fingerprint) and ``backend`` for the SQLite profile at ``db``."""
    return Path(f"{db}.perfmodels") / f"{device}-{backend}.zip"


def _database_error(path: Path, exc: Exception) -> LatpruneError:
    """One clear line for what SQLite (or the file system) said."""
    text = str(exc)
    if "locked" in text or "busy" in text:
        return LatpruneError(f"profile database {path} is locked by another process (waited {LOCK_TIMEOUT_S:g} s); "
                             "try again when it has finished")
    if "readonly" in text or "read-only" in text or isinstance(exc, PermissionError):
        return LatpruneError(f"profile database {path} is read-only here; profile into a writable --db")
    if "unable to open" in text:
        return LatpruneError(f"cannot open profile database {path}: check the path and its folder's permissions")
    return LatpruneError(f"profile database {path} is unreadable or corrupt: {text}")


class SqliteStore(ProfileStore):
    """Timings in one SQLite file."""

    def __init__(self, location: str | os.PathLike | None = None, readonly: bool = False):
        """Open (``readonly``: only read; the file must exist) or create the database file. A database locked
        by another writer is waited for ``LOCK_TIMEOUT_S`` (``$LATPRUNE_DB_TIMEOUT_S``, default 30 s)."""
        super().__init__(location, readonly)
        self.path = Path(location) if location else Path(default_db_path())
        self.location = str(self.path)
        if self.path.is_dir():
            raise LatpruneError(f"profile database {self.path} is a folder")
        if readonly and not self.path.is_file():
            raise LatpruneError(f"no profile database at {self.path}; run `latprune profile` first")
        try:
            if not readonly:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(f"file:{self.path}{'?mode=ro' if readonly else ''}", uri=True,
                                         timeout=LOCK_TIMEOUT_S, isolation_level=None)
            self._conn.execute(f"PRAGMA busy_timeout = {int(LOCK_TIMEOUT_S * 1000)}")
            self._check_schema()
            if not readonly:
                self._conn.execute("PRAGMA journal_mode = WAL")
                self._conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise _database_error(self.path, exc) from None

    def close(self) -> None:
        self._conn.close()

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise _database_error(self.path, exc) from None

    @contextmanager
    def _transaction(self) -> Iterator[_Write]:
        """One write transaction; SQLite's errors (locked, read-only, corrupt) become one clear line."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield _Write(self._conn.execute)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise _database_error(self.path, exc) from None

    def _table_names(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _migrate(self) -> None:
        with self._transaction() as tx:
            for statement in statements("sqlite"):  # idempotent: a version-1 file gains the newer tables
                tx.run(statement)
            tx.run("INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = "
                   "excluded.value", (str(SCHEMA_VERSION),))

    # -------------------------------------------------------------- fits: files beside the database

    def fit_source(self, device: str, backend: str) -> str:
        return str(fit_path(self.path, device, backend))

    def read_fit(self, device: str, backend: str) -> bytes | None:
        path = fit_path(self.path, device, backend)
        return path.read_bytes() if path.is_file() else None

    def write_fit(self, device: str, backend: str, data: bytes) -> None:
        """Written atomically (a temporary file in the same folder, then renamed)."""
        path = fit_path(self.path, device, backend)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
