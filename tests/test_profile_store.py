"""The profile store, run against both kinds: a SQLite file and a PostgreSQL server (a throwaway one the tests
start; see postgres_server.py). Same queries, same refusals, claims that let profilers share one device's work."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from latprune.errors import LatpruneError
from latprune.network import LayerSignature, Measurement
from latprune.profiler import store as store_module
from latprune.profiler.store import NetworkTiming, ProfileStore

M = Measurement(1.0, 0.9, 1.1, 3, 0.01)


def signature(cin: int, cout: int) -> LayerSignature:
    return LayerSignature("conv", cin, cout, (3, 3), (1, 1), (1, 1), 1, (1, 1), 8, 8, 1, "float32", "torch-cpu", "")


def network(variant: str, layers: dict[str, str] | None = None) -> NetworkTiming:
    return NetworkTiming("m@1x3x8x8", variant, {"g": 4}, M, {"l": 0.5}, 0.5, layers or {})


def test_rows_round_trip_and_upserts_keep_one_row_each(store_location):
    with ProfileStore(store_location) as store:
        device = store.device_id("fp", {"cpu": "test", "threads": 1})
        assert store.device_id("fp", {"cpu": "test", "threads": 1}) == device
        assert store.find_device("fp") == device and store.find_device("other") is None
        empty = store.profile_hash(device, "torch-cpu")
        store.save_round(device, "torch-cpu", "m@1x3x8x8", "b", 0, {"round": 0})
        store.save_round(device, "torch-cpu", "m@1x3x8x8", "b", 0, {"round": "again"})
        assert store.pending_rounds(device, "torch-cpu", "m@1x3x8x8") == {"b": {0: {"round": "again"}}}
        # committed out of order: read back by key, so a fit depends on the rows, not on who wrote first
        assert store.finish_variant(device, "torch-cpu", network("b"), [(signature(8, 4), M), (signature(4, 8), M)]) == 2
        assert store.finish_variant(device, "torch-cpu", network("a"), [(signature(4, 8), M)]) == 0
        store.finish_variant(device, "torch-cpu", network("b"), [])  # re-timed: replaced, not duplicated
        assert [n.variant_key for n in store.network_timings(device, "torch-cpu")] == ["a", "b"]
        keys = [t.signature.key() for t in store.layer_timings(device, "torch-cpu")]
        assert keys == sorted(keys) and len(keys) == 2
        assert store.pending_rounds(device, "torch-cpu", "m@1x3x8x8") == {}
        assert store.profile_hash(device, "torch-cpu") != empty
        store.set_fact(device, "torch-cpu", "alignment_step", 8)
        store.set_fact(device, "torch-cpu", "alignment_step", 16)
        assert store.fact(device, "torch-cpu", "alignment_step") == 16
        store.record_drift_check(device, "torch-cpu", "m@1x3x8x8", 2.0)
        assert store.drift_checks(device, "torch-cpu", "m@1x3x8x8") == [2.0]
        [summary] = store.summaries()
        assert (summary.fingerprint, summary.layer_rows, summary.network_rows) == ("fp", 2, 2)
        assert abs(summary.last_profiled - time.time()) < 60
    with ProfileStore(store_location, readonly=True) as store:
        assert store.model_keys(device, "torch-cpu") == ["m@1x3x8x8"]


def test_a_claimed_variant_is_left_to_its_profiler_until_finished_or_lapsed(store_location, monkeypatch):
    with ProfileStore(store_location) as first, ProfileStore(store_location) as second:
        device = first.device_id("fp", {"cpu": "test"})
        key = (device, "torch-cpu", "m@1x3x8x8")
        assert first.claim(*key, "v1") and first.claim(*key, "v1")  # claiming again renews
        assert not second.claim(*key, "v1")
        assert second.claim(*key, "v2")
        first.finish_variant(device, "torch-cpu", network("v1"), [])  # finished: nobody times it again
        assert not second.claim(*key, "v1") and not first.claim(*key, "v1")
        assert not first.claim(*key, "v2")
        second.release_claims()
        assert first.claim(*key, "v2")
        monkeypatch.setattr(store_module, "CLAIM_LEASE_S", -1.0)  # a profiler elsewhere that stopped renewing
        first.save_round(device, "torch-cpu", "m@1x3x8x8", "v2", 0, {})
        assert second.claim(*key, "v2")


CLAIM_AND_EXIT = """
import sys
from latprune.profiler.store import ProfileStore
store = ProfileStore(sys.argv[1])
assert store.claim(store.device_id("fp", {"cpu": "test"}), "torch-cpu", "m", "v")
"""


def test_a_claim_of_a_killed_process_of_this_host_lapses_at_once(store_location):
    subprocess.run([sys.executable, "-c", CLAIM_AND_EXIT, store_location], check=True)  # it ends holding the claim
    with ProfileStore(store_location) as store:
        assert store.claim(store.find_device("fp"), "torch-cpu", "m", "v")


def test_the_profile_hash_does_not_depend_on_the_order_rows_are_summed_in(store_location, monkeypatch):
    """Two devices with the same times on other variants: summed as floats in key order, 0.1 + 0.2 + 0.3 and
    0.3 + 0.2 + 0.1 differ in the last bit; the hash sums whole nanoseconds."""
    monkeypatch.setattr(store_module.time, "time", lambda: 1_000.0)  # both devices' rows created at one time
    with ProfileStore(store_location) as store:
        hashes = []
        for fingerprint, medians in (("up", (0.1, 0.2, 0.3)), ("down", (0.3, 0.2, 0.1))):
            device = store.device_id(fingerprint, {"cpu": fingerprint, "threads": 1})
            for variant, median in zip("abc", medians):
                timing = NetworkTiming("m@1x3x8x8", variant, {"g": 4}, Measurement(median, median, median, 3, 0.0),
                                       {"l": 0.5}, 0.5, {})
                store.finish_variant(device, "torch-cpu", timing, [])
            hashes.append(store.profile_hash(device, "torch-cpu"))
        assert hashes[0] == hashes[1]
        store.finish_variant(device, "torch-cpu", NetworkTiming("m@1x3x8x8", "a", {"g": 4}, Measurement(
            0.301, 0.3, 0.3, 3, 0.0), {"l": 0.5}, 0.5, {}), [])  # a microsecond more
        assert store.profile_hash(device, "torch-cpu") != hashes[1]


def test_a_fitted_performance_model_is_kept_in_the_store_and_loaded_back(store_location, synthetic_backend):
    from latprune.models import load_model
    from latprune.perfmodel.api import fit_perf_model, load_perf_model, stored_fit
    from latprune.perfmodel.persistence import fit_bytes, read_fit_bytes
    from latprune.profiler.runner import profile_model
    from test_profiler import FAST

    report = profile_model(load_model("cifar:resnet20"), "synthetic", db=store_location, settings=FAST,
                           progress=False)
    assert report.variants_timed == report.variants_planned and report.variants_by_others == 0
    with ProfileStore(store_location) as store:
        device = store.find_device(report.device)
        fitted, summary = fit_perf_model(store, device, "synthetic")
        assert store.read_fit(report.device, "synthetic") is not None
        loaded, again = load_perf_model(store, device, "synthetic")
    assert again.status == "loaded" and loaded.layers.measured_ == fitted.layers.measured_
    with ProfileStore(store_location) as store:  # a fit stored by an earlier latprune, whose hash summed floats
        profile_hash, versions, summary_json, model = read_fit_bytes(store.read_fit(report.device, "synthetic"), "test")
        store.write_fit(report.device, "synthetic", fit_bytes(model, profile_hash.removeprefix("ns:"), versions,
                                                              summary_json))
        assert stored_fit(store, device, "synthetic", report.device) == (
            None, "fitted by an earlier latprune, which identified the profile another way")
    if store_location.startswith("postgresql://"):
        assert not os.path.exists(f"{store_location}.perfmodels")


def test_postgres_refuses_foreign_and_newer_databases_untouched(postgres_server):
    import psycopg

    from postgres_server import fresh_database

    foreign = fresh_database(postgres_server)
    with psycopg.connect(foreign, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    with pytest.raises(LatpruneError, match="not a latprune profile database"):
        ProfileStore(foreign)
    with psycopg.connect(foreign) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = 'public'")}
    assert tables == {"users"}

    newer = fresh_database(postgres_server)
    ProfileStore(newer).close()
    with psycopg.connect(newer, autocommit=True) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LatpruneError, match="newer than this latprune"):
        ProfileStore(newer)
    with pytest.raises(LatpruneError, match="holds no profile yet"):
        ProfileStore(fresh_database(postgres_server), readonly=True)


def test_an_unreachable_server_is_one_line_without_the_password(postgres_server, tmp_path):
    url = postgres_server.replace("latprune@", "latprune:hunter2@").rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(LatpruneError) as error:
        ProfileStore(url)
    assert "hunter2" not in str(error.value) and "no_such_database" in str(error.value)
    proc = subprocess.run([sys.executable, "-m", "latprune.cli", "devices", "--db", url], capture_output=True,
                          text=True)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "hunter2" not in proc.stderr


def test_a_server_url_without_psycopg_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(LatpruneError, match=r"latprune\[postgres\]"):
        ProfileStore("postgresql://someone@127.0.0.1:1/db")


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE devices (id INTEGER PRIMARY KEY, fingerprint TEXT NOT NULL UNIQUE, description TEXT NOT NULL);
CREATE TABLE layer_timings (device_id INTEGER NOT NULL, backend TEXT NOT NULL, signature TEXT NOT NULL,
    kind TEXT NOT NULL, median_ms REAL NOT NULL, p10_ms REAL NOT NULL, p90_ms REAL NOT NULL, runs INTEGER NOT NULL,
    spread REAL NOT NULL, source_model TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (device_id, backend, signature));
CREATE TABLE network_timings (device_id INTEGER NOT NULL, backend TEXT NOT NULL, model_key TEXT NOT NULL,
    variant_key TEXT NOT NULL, widths TEXT NOT NULL, median_ms REAL NOT NULL, p10_ms REAL NOT NULL,
    p90_ms REAL NOT NULL, runs INTEGER NOT NULL, spread REAL NOT NULL, layers_ms TEXT NOT NULL,
    layer_signatures TEXT NOT NULL, remainder_ms REAL NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (device_id, backend, model_key, variant_key));
INSERT INTO devices VALUES (1, 'fp', '{}');
"""


def test_a_version_1_sqlite_file_is_read_as_it_is_and_migrated_by_a_writer(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(V1_SCHEMA)
    with ProfileStore(db, readonly=True) as store:
        assert store.find_device("fp") == 1 and store.network_timings(1, "torch-cpu") == []
    with ProfileStore(db) as store:
        assert store.claim(1, "torch-cpu", "m", "v")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "2"


def test_a_profiler_times_the_variants_no_other_holds_and_waits_for_the_rest(store_location, synthetic_backend):
    """Another profiler of this device (elsewhere) holds three variants: this one times the others, waits, and
    counts those three as timed by the other once it commits them."""
    import threading

    from latprune.analysis import as_analysis
    from latprune.models import load_model
    from latprune.pipeline import this_device
    from latprune.profiler.runner import profile_model
    from latprune.profiler.variants import design_variants
    from test_profiler import FAST

    analysis = as_analysis(load_model("cifar:resnet20"))
    variants = design_variants(analysis.groups, FAST.widths, FAST.variants, FAST.step, FAST.seed,
                               branches=analysis.branches)
    held = [v.key for v in variants[1:4]]
    other = ProfileStore(store_location)
    device = other.device_id(this_device("synthetic"), {"cpu": "as this machine"})
    for key in held:
        assert other.claim(device, "synthetic", analysis.key, key)

    def finish_later():  # the other profiler commits them (a connection of its own: SQLite's are per thread)
        time.sleep(3)
        with ProfileStore(store_location) as same:
            for key in held:
                same.finish_variant(device, "synthetic", NetworkTiming(analysis.key, key, {}, M, {}, 0.0), [])

    thread = threading.Thread(target=finish_later)
    thread.start()
    try:
        report = profile_model(analysis, "synthetic", db=store_location, settings=FAST, progress=False)
    finally:
        thread.join()
        other.close()
    assert report.variants_by_others == 3
    assert report.variants_timed == report.variants_planned - 3 - report.variants_reused


PROFILE = ["profile", "--model", "cifar:resnet20", "--widths", "8", "--variants", "8", "--runs", "2", "--rounds", "4", "--warmup", "1",
           "--global-warmup", "0", "--claim-batch", "2", "--json"]


def _latprune(*argv) -> list[str]:
    return [sys.executable, "-m", "latprune.cli", *argv]


def _store_rows(url: str, fingerprint: str) -> tuple[list, list, int, int]:
    with ProfileStore(url, readonly=True) as store:
        device = store.find_device(fingerprint)
        networks = [n.variant_key for n in store.network_timings(device, "torch-cpu")]
        layers = [t.signature.key() for t in store.layer_timings(device, "torch-cpu")]
        pending = sum(len(r) for r in store.pending_rounds(device, "torch-cpu", "cifar:resnet20@1x3x32x32").values())
        claims = store._read("SELECT COUNT(*) FROM variant_claims")[0][0]
    return networks, layers, pending, claims


@pytest.mark.slow  # about 3 minutes on 2 cores: run with -m slow
def test_four_profilers_share_one_server_and_one_killed_midway_resumes(postgres_server, tmp_path):
    """Two profilers of one device, two of other devices (other thread counts), all at once on one PostgreSQL
    store; one of the first two killed with SIGKILL after committing some rounds, then started again: the device's
    rows are exactly those of one uninterrupted profiler, none twice, every variant finished once; and a plan made
    for that device from another process equals the plan made on it."""
    from latprune.pipeline import this_device
    from postgres_server import fresh_database

    url = fresh_database(postgres_server)
    same = ["--backend", "torch-cpu", "--threads", "1"]
    start = [subprocess.Popen(_latprune(*PROFILE, *backend, "--db", url), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
             for backend in (same, same, ["--backend", "torch-cpu", "--threads", "2"],
                             ["--backend", "ort-cpu", "--threads", "1"])]
    fingerprint = this_device("torch-cpu", 1)
    victim = start[0]
    deadline = time.time() + 300
    finished_at_kill = None
    while time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
        try:
            with ProfileStore(url, readonly=True) as store:
                device = store.find_device(fingerprint)
                mine = device and store._read("SELECT COUNT(*) FROM pending_rounds p JOIN variant_claims c USING "
                                              "(device_id, backend, model_key, variant_key) WHERE c.owner LIKE ?",
                                              (f"%:{victim.pid}:%",))[0][0]
                if mine:
                    victim.send_signal(signal.SIGKILL)
                    victim.wait()
                    finished_at_kill = len(store.network_timings(device, "torch-cpu"))
                    break
        except LatpruneError:
            continue  # the schema is still being created
    victim.wait()
    assert finished_at_kill is not None, "the profiler finished before it could be killed midway"
    resumed = subprocess.run(_latprune(*PROFILE, *same, "--db", url), capture_output=True, text=True, check=True)
    reports = [json.loads(resumed.stdout)]
    for proc in start[1:]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0
        reports.append(json.loads(out))

    clean = tmp_path / "clean.sqlite"
    subprocess.run(_latprune(*PROFILE, *same, "--db", str(clean)), check=True, capture_output=True)
    networks, layers, pending, claims = _store_rows(url, fingerprint)
    clean_networks, clean_layers, _, _ = _store_rows(str(clean), fingerprint)
    assert networks == clean_networks and layers == clean_layers  # same row set (read back by key)
    with ProfileStore(url, readonly=True) as store:
        left = store._read("SELECT p.variant_key, p.round, c.owner FROM pending_rounds p LEFT JOIN variant_claims c "
                           "USING (device_id, backend, model_key, variant_key)")
    assert pending == 0 and claims == 0, (left, victim.pid, [p.pid for p in start], resumed.stderr[-2000:])
    same_device = [reports[0], reports[1]]
    planned = same_device[0]["variants_planned"]
    # each variant finished exactly once: by the killed profiler before the kill, or by one of the two others
    assert finished_at_kill + sum(r["variants_timed"] + r["variants_reused"] for r in same_device) == planned
    assert {r["device"] for r in reports[2:]}.isdisjoint({fingerprint})

    subprocess.run(_latprune("fit", "--backend", "torch-cpu", "--threads", "1", "--db", url), check=True,
                   capture_output=True)  # both plans below read this fit from the server
    import torch

    from latprune.models import load_model

    torch.manual_seed(0)
    torch.save(load_model("cifar:resnet20").model.state_dict(), tmp_path / "w.pt")  # the same weights on both sides
    plan = ["plan", "--model", "cifar:resnet20", "--weights", str(tmp_path / "w.pt"), "--backend", "torch-cpu",
            "--speedup", "1.1", "--no-verify", "--db", url, "--json"]  # 4 profilers on 2 cores: a contended profile
    results = [subprocess.run(_latprune(*plan, *extra), capture_output=True, text=True)
               for extra in (["--threads", "1"], ["--threads", "2", "--device", fingerprint])]
    assert [r.returncode for r in results] == [0, 0], [r.stderr for r in results]
    on_device, elsewhere = (json.loads(r.stdout) for r in results)
    assert [g["kept"] for g in elsewhere["groups"]] == [g["kept"] for g in on_device["groups"]]
    assert elsewhere["device"] == on_device["device"] == fingerprint
    assert elsewhere["verification"]["verified"] is False
