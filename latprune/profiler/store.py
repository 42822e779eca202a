"""``ProfileStore``: the database of timings. Nothing else in latprune writes SQL.

One row per (device, backend, layer signature) for layer timings; whole-network timings
per pruned variant; partial rounds of variants still being timed (so an interrupted run
resumes); drift checks of a reference network; claims by which profilers of one device
share the variants to time. Every write is its own transaction.

``ProfileStore(location)`` opens the store a location names: a file path is a SQLite
database (the default; :mod:`latprune.profiler.store_sqlite`), a ``postgresql://`` URL a
PostgreSQL server (:mod:`latprune.profiler.store_postgres`, the optional ``[postgres]``
extra). Both run the same queries below; they differ only in how they connect, lock, check
the schema and keep fitted performance models.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from latprune.errors import LatpruneError
from latprune.network import LayerSignature, Measurement
from latprune.outputs import user_cache_dir
from latprune.profiler.store_schema import CORE_TABLES, SCHEMA_VERSION

SERVER_SCHEMES = ("postgresql://", "postgres://")
# How long a variant stays claimed by a profiler that stopped renewing its claim (a crashed one elsewhere).
CLAIM_LEASE_S = float(os.environ.get("LATPRUNE_CLAIM_LEASE_S", "120"))
# The rows of one variant, in the tables keyed by it.
_VARIANT = "WHERE device_id = ? AND backend = ? AND model_key = ? AND variant_key = ?"
NS_PER_MS = 1_000_000
# Marks a profile hash that sums whole nanoseconds (a fit stored with an older hash is refitted, said so).
PROFILE_HASH_PREFIX = "ns:"


def default_db_path() -> str | Path:
    """``$LATPRUNE_DB`` (a path or a server URL), else ``<user cache dir>/latprune/profiles.sqlite``."""
    if os.environ.get("LATPRUNE_DB"):
        value = os.environ["LATPRUNE_DB"]
        return value if is_server_url(value) else Path(value)
    return user_cache_dir() / "profiles.sqlite"


def is_server_url(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.startswith(SERVER_SCHEMES)


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
    last_profiled: float | None = None  # when its newest timing was committed (Unix time)


class _Write:
    """What a write transaction hands its body: ``run(sql, params)`` returns the cursor."""

    def __init__(self, run: Callable):
        self.run = run


class ProfileStore:
    """Timings of one database. Use as a context manager or call :meth:`close`.

    ``ProfileStore(location, readonly)`` returns the store for ``location`` (see the module
    docstring). A database that is not a latprune database, or one of a newer schema, is
    refused before anything in it is changed.
    """

    location: str  # for messages: the file path, or the server URL without its password

    def __new__(cls, location: str | os.PathLike | None = None, readonly: bool = False):
        if cls is ProfileStore:  # the subclass's __init__ then runs with the same arguments
            if is_server_url(location or default_db_path()):
                from latprune.profiler.store_postgres import PostgresStore as cls
            else:
                from latprune.profiler.store_sqlite import SqliteStore as cls
        return object.__new__(cls)

    def __init__(self, location: str | os.PathLike | None = None, readonly: bool = False):
        self.readonly = readonly
        # Who holds a claim: this host and process, and this store (two stores of one process are two profilers).
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------ what each store provides

    def _read(self, sql: str, params: tuple = ()) -> list[tuple]:
        raise NotImplementedError

    def _transaction(self) -> AbstractContextManager[_Write]:
        raise NotImplementedError

    def read_fit(self, device: str, backend: str) -> bytes | None:
        """The stored performance-model fit of ``device`` and ``backend`` (None: none stored)."""
        raise NotImplementedError

    def write_fit(self, device: str, backend: str, data: bytes) -> None:
        raise NotImplementedError

    def fit_source(self, device: str, backend: str) -> str:
        """Where that fit is kept, for messages."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _table_names(self) -> set[str]:
        raise NotImplementedError

    def _check_schema(self) -> None:
        """Refuse other programs' databases and newer schemas without writing anything."""
        tables = self._table_names()
        if not tables:
            if self.readonly:
                raise LatpruneError(f"{self.location} holds no profile yet; run `latprune profile` first")
            return  # a new database
        rows = self._read("SELECT value FROM meta WHERE key = 'schema_version'") if "meta" in tables else []
        if not rows or not CORE_TABLES <= tables:
            raise LatpruneError(f"{self.location} is not a latprune profile database (it was left unchanged)")
        if int(rows[0][0]) > SCHEMA_VERSION:
            raise LatpruneError(f"profile database {self.location} has schema {rows[0][0]}, newer than this "
                                f"latprune ({SCHEMA_VERSION})")

    def __enter__(self) -> "ProfileStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------- devices

    def device_id(self, fingerprint: str, description: dict) -> int:
        with self._transaction() as tx:
            tx.run("INSERT INTO devices (fingerprint, description) VALUES (?, ?) ON CONFLICT DO NOTHING",
                   (fingerprint, json.dumps(description, sort_keys=True)))
            return tx.run("SELECT id FROM devices WHERE fingerprint = ?", (fingerprint,)).fetchone()[0]

    def summaries(self) -> list[DeviceSummary]:
        rows = self._read(
            """SELECT d.fingerprint, d.description, b.backend,
                      (SELECT COUNT(*) FROM layer_timings l WHERE l.device_id = d.id AND l.backend = b.backend),
                      (SELECT COUNT(*) FROM network_timings n WHERE n.device_id = d.id AND n.backend = b.backend),
                      (SELECT MAX(n.created) FROM network_timings n WHERE n.device_id = d.id AND n.backend = b.backend)
               FROM devices d JOIN (SELECT device_id, backend FROM layer_timings
                                    UNION SELECT device_id, backend FROM network_timings) b
               ON b.device_id = d.id ORDER BY d.id, b.backend"""
        )
        return [DeviceSummary(r[0], json.loads(r[1]), r[2], r[3], r[4], r[5]) for r in rows]

    def find_device(self, fingerprint: str) -> int | None:
        rows = self._read("SELECT id FROM devices WHERE fingerprint = ?", (fingerprint,))
        return rows[0][0] if rows else None

    def device_fingerprint(self, device_id: int) -> str:
        rows = self._read("SELECT fingerprint FROM devices WHERE id = ?", (device_id,))
        if not rows:
            raise LatpruneError(f"no device {device_id} in {self.location}")
        return rows[0][0]

    # -------------------------------------------------------------- layer timings

    def known_signatures(self, device_id: int, backend: str, exclude_model: str | None = None) -> set[str]:
        """Signature keys already timed, optionally ignoring those first timed for one model."""
        rows = self._read(
            "SELECT signature FROM layer_timings WHERE device_id = ? AND backend = ? AND source_model != ?",
            (device_id, backend, exclude_model or ""),
        )
        return {r[0] for r in rows}

    def layer_timings(self, device_id: int, backend: str) -> list[LayerTiming]:
        """Ordered by signature: a fit depends on which rows there are, not on who committed them first."""
        rows = self._read(
            """SELECT signature, median_ms, p10_ms, p90_ms, runs, spread, source_model
               FROM layer_timings WHERE device_id = ? AND backend = ? ORDER BY signature""",
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
        """Record a fully timed variant and its layers in one transaction, and release its claim.

        Layer signatures already present keep their first measurement (reused, not
        re-timed). Returns the number of new layer rows.
        """
        now = time.time()
        m = network.measurement
        with self._transaction() as tx:
            added = 0
            for signature, lm in layers:
                cursor = tx.run(
                    "INSERT INTO layer_timings VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (device_id, backend, signature.key(), signature.kind, lm.median_ms, lm.p10_ms, lm.p90_ms,
                     lm.runs, lm.spread, network.model_key, now),
                )
                added += max(cursor.rowcount, 0)
            tx.run(
                """INSERT INTO network_timings VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT (device_id, backend, model_key, variant_key) DO UPDATE SET
                   widths = excluded.widths, median_ms = excluded.median_ms, p10_ms = excluded.p10_ms,
                   p90_ms = excluded.p90_ms, runs = excluded.runs, spread = excluded.spread,
                   layers_ms = excluded.layers_ms, layer_signatures = excluded.layer_signatures,
                   remainder_ms = excluded.remainder_ms, created = excluded.created""",
                (device_id, backend, network.model_key, network.variant_key, json.dumps(network.widths),
                 m.median_ms, m.p10_ms, m.p90_ms, m.runs, m.spread, json.dumps(network.layers_ms),
                 json.dumps(network.layer_signatures), network.remainder_ms, now),
            )
            key = (device_id, backend, network.model_key, network.variant_key)
            tx.run(f"DELETE FROM pending_rounds {_VARIANT}", key)
            tx.run(f"DELETE FROM variant_claims {_VARIANT}", key)
        return added

    def network_timings(self, device_id: int, backend: str, model_key: str | None = None) -> list[NetworkTiming]:
        query = """SELECT model_key, variant_key, widths, median_ms, p10_ms, p90_ms, runs, spread, layers_ms,
                          remainder_ms, layer_signatures FROM network_timings WHERE device_id = ? AND backend = ?"""
        params: tuple = (device_id, backend)
        if model_key is not None:
            query += " AND model_key = ?"
            params += (model_key,)
        rows = self._read(query + " ORDER BY model_key, variant_key", params)
        return [
            NetworkTiming(r[0], r[1], json.loads(r[2]), Measurement(*r[3:8]), json.loads(r[8]), r[9], json.loads(r[10]))
            for r in rows
        ]

    def model_keys(self, device_id: int, backend: str) -> list[str]:
        """The model keys (spec @ input shape) with whole-network timings on this device and backend."""
        rows = self._read("SELECT DISTINCT model_key FROM network_timings WHERE device_id = ? AND backend = ?"
                          " ORDER BY model_key", (device_id, backend))
        return [r[0] for r in rows]

    def save_round(self, device_id: int, backend: str, model_key: str, variant_key: str, round_index: int,
                   data: dict) -> None:
        """Commit one round of a variant, and renew every claim this store holds."""
        with self._transaction() as tx:
            tx.run(
                """INSERT INTO pending_rounds VALUES (?,?,?,?,?,?)
                   ON CONFLICT (device_id, backend, model_key, variant_key, round) DO UPDATE SET data = excluded.data""",
                (device_id, backend, model_key, variant_key, round_index, json.dumps(data)),
            )
            tx.run("UPDATE variant_claims SET expires = ? WHERE owner = ?", (time.time() + CLAIM_LEASE_S, self.owner))

    def pending_rounds(self, device_id: int, backend: str, model_key: str,
                       variant_key: str | None = None) -> dict[str, dict[int, dict]]:
        query = "SELECT variant_key, round, data FROM pending_rounds WHERE device_id = ? AND backend = ? AND model_key = ?"
        params: tuple = (device_id, backend, model_key)
        if variant_key is not None:
            query += " AND variant_key = ?"
            params += (variant_key,)
        pending: dict[str, dict[int, dict]] = {}
        for key, round_index, data in self._read(query, params):
            pending.setdefault(key, {})[round_index] = json.loads(data)
        return pending

    # -------------------------------------------------------------- claims (profilers sharing one device's work)

    def claim(self, device_id: int, backend: str, model_key: str, variant_key: str) -> bool:
        """Take the variant for this store's profiler unless it is finished or another live profiler holds it.

        A claim is held until the variant is finished, renewed by every round this store
        commits; it lapses ``CLAIM_LEASE_S`` after its holder's last round, or at once when
        its holder was a process of this host that no longer runs (killed).
        """
        now = time.time()
        key = (device_id, backend, model_key, variant_key)
        with self._transaction() as tx:
            if tx.run(f"SELECT 1 FROM network_timings {_VARIANT}", key).fetchone():
                return False  # finished meanwhile by another profiler
            taken = tx.run(
                """INSERT INTO variant_claims VALUES (?,?,?,?,?,?)
                   ON CONFLICT (device_id, backend, model_key, variant_key) DO UPDATE SET
                   owner = excluded.owner, expires = excluded.expires
                   WHERE variant_claims.expires < ? OR variant_claims.owner = ?""",
                (*key, self.owner, now + CLAIM_LEASE_S, now, self.owner),
            ).rowcount
            if taken > 0:
                return True
            row = tx.run(f"SELECT owner FROM variant_claims {_VARIANT}", key).fetchone()
            if row is None or not _dead_here(row[0]):
                return False
            return tx.run(f"UPDATE variant_claims SET owner = ?, expires = ? {_VARIANT} AND owner = ?",
                          (self.owner, now + CLAIM_LEASE_S, *key, row[0])).rowcount > 0

    def release_claims(self) -> None:
        """Give up every claim this store holds (an interrupted profiler leaves its variants to the others)."""
        with self._transaction() as tx:
            tx.run("DELETE FROM variant_claims WHERE owner = ?", (self.owner,))

    def finished_variants(self, device_id: int, backend: str, model_key: str) -> set[str]:
        rows = self._read("SELECT variant_key FROM network_timings WHERE device_id = ? AND backend = ? "
                          "AND model_key = ?", (device_id, backend, model_key))
        return {r[0] for r in rows}

    # -------------------------------------------------------------- profile identity

    def profile_hash(self, device_id: int, backend: str) -> str:
        """Changes whenever the timings of this device and backend change, and only then: the times are summed in
        whole nanoseconds, so the rows' order does not matter (a float sum depends on it, and PostgreSQL may read
        the same rows in another order once its statistics change: a fit stored a moment before was then "stale")."""
        parts = []
        for table in ("layer_timings", "network_timings"):
            parts.append(list(self._read(
                f"SELECT COUNT(*), COALESCE(MAX(created), 0), "
                f"COALESCE(CAST(SUM(CAST(median_ms * {NS_PER_MS} AS BIGINT)) AS BIGINT), 0) FROM {table} "
                "WHERE device_id = ? AND backend = ?", (device_id, backend))[0]))
        return PROFILE_HASH_PREFIX + json.dumps(parts)

    # -------------------------------------------------------------- drift and facts

    def record_drift_check(self, device_id: int, backend: str, model_key: str, median_ms: float) -> None:
        with self._transaction() as tx:
            tx.run("INSERT INTO drift_checks VALUES (?,?,?,?,?)", (device_id, backend, model_key, time.time(), median_ms))

    def drift_checks(self, device_id: int, backend: str, model_key: str) -> list[float]:
        rows = self._read(
            "SELECT median_ms FROM drift_checks WHERE device_id = ? AND backend = ? AND model_key = ? ORDER BY at",
            (device_id, backend, model_key),
        )
        return [r[0] for r in rows]

    def set_fact(self, device_id: int, backend: str, key: str, value) -> None:
        with self._transaction() as tx:
            tx.run("INSERT INTO backend_facts VALUES (?,?,?,?) ON CONFLICT (device_id, backend, key) "
                   "DO UPDATE SET value = excluded.value", (device_id, backend, key, json.dumps(value)))

    def fact(self, device_id: int, backend: str, key: str, default=None):
        rows = self._read("SELECT value FROM backend_facts WHERE device_id = ? AND backend = ? AND key = ?",
                          (device_id, backend, key))
        return json.loads(rows[0][0]) if rows else default


def _dead_here(owner: str) -> bool:
    """Whether a claim's holder was a process of this host that has ended."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

