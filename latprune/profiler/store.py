"""``ProfileStore``: the SQLite database of timings. Nothing else in latprune writes SQL.

One row per (device, backend, layer signature) for layer timings; whole-network timings
per pruned variant; partial rounds of variants still being timed (so an interrupted run
resumes); drift checks of a reference network. Every write is its own transaction, the
database runs in WAL mode with a busy timeout, so two profilers can share it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from latprune.errors import LatpruneError
from latprune.network import LayerSignature, Measurement
from latprune.outputs import user_cache_dir

SCHEMA_VERSION = 1
# How long a locked database is waited for before giving up with a clear message.
LOCK_TIMEOUT_S = float(os.environ.get("LATPRUNE_DB_TIMEOUT_S", "30"))

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS layer_timings (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    backend TEXT NOT NULL,
    signature TEXT NOT NULL,
    kind TEXT NOT NULL,
    median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL,
    runs INTEGER NOT NULL, spread REAL NOT NULL,
    source_model TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (device_id, backend, signature)
);
CREATE TABLE IF NOT EXISTS network_timings (
    device_id INTEGER NOT NULL REFERENCES devices(id),
    backend TEXT NOT NULL,
    model_key TEXT NOT NULL,
    variant_key TEXT NOT NULL,
    widths TEXT NOT NULL,
    median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL,
    runs INTEGER NOT NULL, spread REAL NOT NULL,
    layers_ms TEXT NOT NULL,
    layer_signatures TEXT NOT NULL,
    remainder_ms REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (device_id, backend, model_key, variant_key)
);
CREATE TABLE IF NOT EXISTS pending_rounds (
    device_id INTEGER NOT NULL, backend TEXT NOT NULL, model_key TEXT NOT NULL,
    variant_key TEXT NOT NULL, round INTEGER NOT NULL, data TEXT NOT NULL,
    PRIMARY KEY (device_id, backend, model_key, variant_key, round)
);
CREATE TABLE IF NOT EXISTS drift_checks (
    device_id INTEGER NOT NULL, backend TEXT NOT NULL, model_key TEXT NOT NULL,
    at REAL NOT NULL, median_ms REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS backend_facts (
    device_id INTEGER NOT NULL, backend TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (device_id, backend, key)
);
"""


def default_db_path() -> Path:
    """``$LATPRUNE_DB``, else ``<user cache dir>/latprune/profiles.sqlite``."""
    if os.environ.get("LATPRUNE_DB"):
        return Path(os.environ["LATPRUNE_DB"])
    return user_cache_dir() / "profiles.sqlite"


@dataclass(frozen=True)
class LayerTiming:
    signature: LayerSignature
    measurement: Measurement
    source_model: str


@dataclass(frozen=True)
class NetworkTiming:
    model_key: str
    variant_key: str
    widths: dict[str, int]
    measurement: Measurement
    layers_ms: dict[str, float]
    remainder_ms: float
    layer_signatures: dict[str, str] = field(default_factory=dict)  # layer -> signature key


@dataclass(frozen=True)
class DeviceSummary:
    fingerprint: str
    description: dict
    backend: str
    layer_rows: int
    network_rows: int


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


class ProfileStore:
    """Timings of one database file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike | None = None, readonly: bool = False):
        """Open (``readonly``: only read; the file must exist) or create a profile database.

        A file that is not a latprune database, or one of a newer schema, is refused before
        anything in it is changed. A database locked by another writer is waited for ``LOCK_TIMEOUT_S``
        (``$LATPRUNE_DB_TIMEOUT_S``, default 30 s).
        """
        self.path = Path(path) if path else default_db_path()
        self.readonly = readonly
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

    def __enter__(self) -> "ProfileStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; SQLite's errors (locked, read-only, corrupt) become one clear line."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise _database_error(self.path, exc) from None

    def _check_schema(self) -> None:
        """Refuse other programs' databases and newer schemas without writing anything."""
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            if self.readonly:
                raise LatpruneError(f"{self.path} holds no profile yet; run `latprune profile` first")
            return  # a new database
        row = None
        if "meta" in tables:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not {"devices", "layer_timings"} <= tables:
            raise LatpruneError(f"{self.path} is not a latprune profile database (it was left unchanged)")
        if int(row[0]) > SCHEMA_VERSION:
            raise LatpruneError(
                f"profile database {self.path} has schema {row[0]}, newer than this latprune ({SCHEMA_VERSION})"
            )

    def _migrate(self) -> None:
        self._conn.executescript(_SCHEMA)  # idempotent; executescript manages its own commit
        with self._transaction() as conn:
            if conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() is None:
                conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    # -------------------------------------------------------------- devices

    def device_id(self, fingerprint: str, description: dict) -> int:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO devices (fingerprint, description) VALUES (?, ?)",
                (fingerprint, json.dumps(description, sort_keys=True)),
            )
            return conn.execute("SELECT id FROM devices WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]

    def summaries(self) -> list[DeviceSummary]:
        rows = self._conn.execute(
            """SELECT d.fingerprint, d.description, b.backend,
                      (SELECT COUNT(*) FROM layer_timings l WHERE l.device_id = d.id AND l.backend = b.backend),
                      (SELECT COUNT(*) FROM network_timings n WHERE n.device_id = d.id AND n.backend = b.backend)
               FROM devices d JOIN (SELECT device_id, backend FROM layer_timings
                                    UNION SELECT device_id, backend FROM network_timings) b
               ON b.device_id = d.id ORDER BY d.id, b.backend"""
        ).fetchall()
        return [DeviceSummary(r[0], json.loads(r[1]), r[2], r[3], r[4]) for r in rows]

    # -------------------------------------------------------------- layer timings

    def known_signatures(self, device_id: int, backend: str, exclude_model: str | None = None) -> set[str]:
        """Signature keys already timed, optionally ignoring those first timed for one model."""
        rows = self._conn.execute(
            "SELECT signature FROM layer_timings WHERE device_id = ? AND backend = ? AND source_model != ?",
            (device_id, backend, exclude_model or ""),
        )
        return {r[0] for r in rows}

    def layer_timings(self, device_id: int, backend: str) -> list[LayerTiming]:
        rows = self._conn.execute(
            """SELECT signature, median_ms, p10_ms, p90_ms, runs, spread, source_model
               FROM layer_timings WHERE device_id = ? AND backend = ? ORDER BY rowid""",
            (device_id, backend),
        )
        return [
            LayerTiming(LayerSignature.from_json(json.loads(r[0])), Measurement(*r[1:6]), r[6]) for r in rows
        ]

    # -------------------------------------------------------------- variants

    def finish_variant(
        self,
        device_id: int,
        backend: str,
        network: NetworkTiming,
        layers: Iterable[tuple[LayerSignature, Measurement]],
    ) -> int:
        """Record a fully timed variant and its layers in one transaction.

        Layer signatures already present keep their first measurement (reused, not
        re-timed). Returns the number of new layer rows.
        """
        now = time.time()
        m = network.measurement
        with self._transaction() as conn:
            added = 0
            for signature, lm in layers:
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO layer_timings VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (device_id, backend, signature.key(), signature.kind, lm.median_ms, lm.p10_ms, lm.p90_ms,
                     lm.runs, lm.spread, network.model_key, now),
                )
                added += cursor.rowcount
            conn.execute(
                "INSERT OR REPLACE INTO network_timings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (device_id, backend, network.model_key, network.variant_key, json.dumps(network.widths),
                 m.median_ms, m.p10_ms, m.p90_ms, m.runs, m.spread, json.dumps(network.layers_ms),
                 json.dumps(network.layer_signatures), network.remainder_ms, now),
            )
            conn.execute(
                "DELETE FROM pending_rounds WHERE device_id = ? AND backend = ? AND model_key = ? AND variant_key = ?",
                (device_id, backend, network.model_key, network.variant_key),
            )
        return added

    def network_timings(self, device_id: int, backend: str, model_key: str | None = None) -> list[NetworkTiming]:
        query = """SELECT model_key, variant_key, widths, median_ms, p10_ms, p90_ms, runs, spread, layers_ms,
                          remainder_ms, layer_signatures FROM network_timings WHERE device_id = ? AND backend = ?"""
        params: tuple = (device_id, backend)
        if model_key is not None:
            query += " AND model_key = ?"
            params += (model_key,)
        rows = self._conn.execute(query + " ORDER BY rowid", params)
        return [
            NetworkTiming(r[0], r[1], json.loads(r[2]), Measurement(*r[3:8]), json.loads(r[8]), r[9], json.loads(r[10]))
            for r in rows
        ]

    def model_keys(self, device_id: int, backend: str) -> list[str]:
        """The model keys (spec @ input shape) with whole-network timings on this device and backend."""
        rows = self._conn.execute("SELECT DISTINCT model_key FROM network_timings WHERE device_id = ? AND backend = ?"
                                  " ORDER BY model_key", (device_id, backend))
        return [r[0] for r in rows]

    def save_round(self, device_id: int, backend: str, model_key: str, variant_key: str, round_index: int,
                   data: dict) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO pending_rounds VALUES (?,?,?,?,?,?)",
                (device_id, backend, model_key, variant_key, round_index, json.dumps(data)),
            )

    def pending_rounds(self, device_id: int, backend: str, model_key: str) -> dict[str, dict[int, dict]]:
        rows = self._conn.execute(
            "SELECT variant_key, round, data FROM pending_rounds WHERE device_id = ? AND backend = ? AND model_key = ?",
            (device_id, backend, model_key),
        )
        pending: dict[str, dict[int, dict]] = {}
        for variant_key, round_index, data in rows:
            pending.setdefault(variant_key, {})[round_index] = json.loads(data)
        return pending

    # -------------------------------------------------------------- profile identity

    def profile_hash(self, device_id: int, backend: str) -> str:
        """Changes whenever the timings of this device and backend change."""
        parts = []
        for table in ("layer_timings", "network_timings"):
            parts.append(self._conn.execute(
                f"SELECT COUNT(*), COALESCE(MAX(created), 0), COALESCE(SUM(median_ms), 0) FROM {table} "
                "WHERE device_id = ? AND backend = ?", (device_id, backend)).fetchone())
        return json.dumps(parts)

    def find_device(self, fingerprint: str) -> int | None:
        row = self._conn.execute("SELECT id FROM devices WHERE fingerprint = ?", (fingerprint,)).fetchone()
        return row[0] if row else None

    def device_fingerprint(self, device_id: int) -> str:
        row = self._conn.execute("SELECT fingerprint FROM devices WHERE id = ?", (device_id,)).fetchone()
        if row is None:
            raise LatpruneError(f"no device {device_id} in {self.path}")
        return row[0]

    # -------------------------------------------------------------- drift and facts

    def record_drift_check(self, device_id: int, backend: str, model_key: str, median_ms: float) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT INTO drift_checks VALUES (?,?,?,?,?)",
                         (device_id, backend, model_key, time.time(), median_ms))

    def drift_checks(self, device_id: int, backend: str, model_key: str) -> list[float]:
        rows = self._conn.execute(
            "SELECT median_ms FROM drift_checks WHERE device_id = ? AND backend = ? AND model_key = ? ORDER BY at",
            (device_id, backend, model_key),
        )
        return [r[0] for r in rows]

    def set_fact(self, device_id: int, backend: str, key: str, value) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO backend_facts VALUES (?,?,?,?)",
                         (device_id, backend, key, json.dumps(value)))

    def fact(self, device_id: int, backend: str, key: str, default=None):
        row = self._conn.execute(
            "SELECT value FROM backend_facts WHERE device_id = ? AND backend = ? AND key = ?",
            (device_id, backend, key),
        ).fetchone()
        return json.loads(row[0]) if row else default
