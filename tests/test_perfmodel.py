"""Performance model: reproduces measurements, learns staircases, never uses a stale fit."""

import json
import os
import pickle
import sqlite3
import zipfile

import numpy as np
import pytest

from latprune.errors import LatpruneError
from latprune.groups import find_channel_groups
from latprune.models import load_model
from latprune.perfmodel.api import device_id_for, fit_perf_model, load_perf_model
from latprune.profiler.store_sqlite import fit_path
from latprune.perfmodel.estimator import LayerLatencyModel
from latprune.perfmodel.persistence import FORMAT_VERSION
from latprune.network import model_key
from latprune.network import LayerSignature, Measurement
from latprune.profiler.store import NetworkTiming, ProfileStore
from latprune.network import network_signatures

@pytest.fixture
def profiled(profiled_resnet20):
    return profiled_resnet20


@pytest.fixture
def profile_copy(profiled, tmp_path):
    """A private copy of the profiled database, for tests that change it."""
    db = tmp_path / "copy.sqlite"
    with sqlite3.connect(profiled) as source, sqlite3.connect(db) as target:
        source.backup(target)
    return db


def test_prediction_at_a_measured_point_reproduces_the_measurement(profiled):
    with ProfileStore(profiled) as store:
        device_id, _ = device_id_for(store, "torch-cpu")
        model, summary = fit_perf_model(store, device_id, "torch-cpu")
        timings = store.layer_timings(device_id, "torch-cpu")
        networks = store.network_timings(device_id, "torch-cpu")
    predicted = model.layers.predict([t.signature for t in timings])
    measured = np.array([t.measurement.median_ms for t in timings])
    # A segment whose overhead correction left 0 ms is answered with the documented floor: half the
    # smallest positive measurement (log-scale fits need positive times); every other one exactly.
    floor = 0.5 * measured[measured > 0].min()
    assert np.array_equal(predicted, np.maximum(measured, floor))
    by_key = {t.signature.key(): t.signature for t in timings}
    residuals, noise = [], []
    for n in networks:
        sigs = [by_key[k] for k in n.layer_signatures.values()]
        residuals.append(abs(model.predict(n.model_key, sigs) / n.measurement.median_ms - 1))
        noise.append((n.measurement.p90_ms - n.measurement.p10_ms) / n.measurement.median_ms)
    assert np.median(residuals) <= np.median(noise)  # whole networks: within the measurement's own spread
    assert summary.network_rows == len(networks) == 1 + 12 + 3  # dense, width variants, 25% more without branches


def test_dense_model_prediction_uses_its_profiled_layers(profiled):
    loaded = load_model("cifar:resnet20")
    with ProfileStore(profiled) as store:
        device_id, _ = device_id_for(store, "torch-cpu")
        model, _ = load_perf_model(store, device_id, "torch-cpu")
        full = {g.id: g.width for g in find_channel_groups(loaded.model, loaded.example_input()).groups}
        dense = next(n for n in store.network_timings(device_id, "torch-cpu") if n.widths == full)
    predicted = model.predict(model_key(loaded), network_signatures(loaded.model, loaded.input_shape, "torch-cpu"))
    assert predicted == pytest.approx(dense.measurement.median_ms, rel=max(0.15, dense.measurement.spread))


def test_changed_profile_triggers_a_refit(profile_copy):
    with ProfileStore(profile_copy) as store:
        device_id, _ = device_id_for(store, "torch-cpu")
        fit_perf_model(store, device_id, "torch-cpu")
        assert load_perf_model(store, device_id, "torch-cpu")[1].status == "loaded"
        sig = LayerSignature("conv", 3, 5, (3, 3), (1, 1), (1, 1), 1, (1, 1), 9, 9, 1, "float32", "torch-cpu", "")
        m = Measurement(0.5, 0.4, 0.6, 3, 0.0)
        store.finish_variant(device_id, "torch-cpu", NetworkTiming("other", "v", {}, m, {}, 0.0), [(sig, m)])
        _, summary = load_perf_model(store, device_id, "torch-cpu")
        assert summary.status == "refitted: the profile changed since the fit"
        assert summary.layer_rows == len(store.layer_timings(device_id, "torch-cpu"))


def test_fit_from_other_library_versions_is_refitted_or_refused(profile_copy):
    db = profile_copy
    with ProfileStore(db) as store:
        device_id, device = device_id_for(store, "torch-cpu")
        fit_perf_model(store, device_id, "torch-cpu")
    def older_sklearn(name: str, data: bytes) -> bytes:
        if name != "fit.json":
            return data
        state = json.loads(data)
        state["versions"]["scikit-learn"] = "0.1"
        return json.dumps(state).encode()

    _rewrite_entries(fit_path(db, device, "torch-cpu"), older_sklearn)
    with ProfileStore(db) as store:
        with pytest.raises(LatpruneError, match=r"other library versions \(scikit-learn 0.1 -> "):
            load_perf_model(store, device_id, "torch-cpu", refit=False)
        _, summary = load_perf_model(store, device_id, "torch-cpu")
        assert summary.status.startswith("refitted: fitted under other library versions")
        assert load_perf_model(store, device_id, "torch-cpu")[1].status == "loaded"


def _rewrite_entries(path, change) -> None:
    """Rewrite every entry of a stored fit's zip through ``change(name, data) -> data``."""
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, change(name, data))


def test_stored_fit_lives_beside_the_profile_and_predicts_exactly_as_fitted(profile_copy):
    loaded = load_model("cifar:resnet20")
    signatures = network_signatures(loaded.model, loaded.input_shape, "torch-cpu")
    unseen = [LayerSignature("conv", 24, 40, (3, 3), (1, 1), (1, 1), 1, (1, 1), 16, 16, 1, "float32", "torch-cpu",
                             "batch_norm+relu")]
    with ProfileStore(profile_copy) as store:
        device_id, device = device_id_for(store, "torch-cpu")
        fitted, _ = fit_perf_model(store, device_id, "torch-cpu")
        loaded_fit, summary = load_perf_model(store, device_id, "torch-cpu")
    assert summary.status == "loaded"
    assert fit_path(profile_copy, device, "torch-cpu").is_file()
    with sqlite3.connect(profile_copy) as conn:  # the profiler's database holds timings only
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any("perf" in t for t in tables)
    key = model_key(loaded)
    assert loaded_fit.predict(key, signatures) == fitted.predict(key, signatures)
    assert loaded_fit.layers.predict(unseen, use_measured=False)[0] == fitted.layers.predict(unseen,
                                                                                            use_measured=False)[0]


def test_a_crafted_fit_file_runs_no_code_and_is_refitted(profile_copy, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with ProfileStore(profile_copy) as store:
        device_id, device = device_id_for(store, "torch-cpu")
        fit_perf_model(store, device_id, "torch-cpu")
        _rewrite_entries(fit_path(profile_copy, device, "torch-cpu"),
                         lambda name, data: pickle.dumps(Exploit()) if name.endswith(".skops") else data)
        _, summary = load_perf_model(store, device_id, "torch-cpu")
    assert not marker.exists()
    assert summary.status.startswith("refitted: the stored fit is unreadable")


def test_a_fit_of_an_older_format_is_refitted_and_the_reason_names_the_formats(profile_copy):
    def as_format_2(name, data):
        if name != "fit.json":
            return data
        return json.dumps({**json.loads(data), "version": 2}).encode()

    with ProfileStore(profile_copy) as store:
        device_id, device = device_id_for(store, "torch-cpu")
        fit_perf_model(store, device_id, "torch-cpu")
        _rewrite_entries(fit_path(profile_copy, device, "torch-cpu"), as_format_2)
        _, summary = load_perf_model(store, device_id, "torch-cpu")
        _, again = load_perf_model(store, device_id, "torch-cpu")
    assert summary.status.startswith("refitted: ") and "fit of format 2, made by another latprune" in summary.status
    assert f"reads format {FORMAT_VERSION}" in summary.status and again.status == "loaded"


def test_step_aware_features_learn_a_latency_staircase():
    base = dict(kind="conv", kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), height=28, width=28,
                batch=1, dtype="float32", backend="ort-cpu", epilogue="relu")
    rng = np.random.default_rng(0)

    def staircase(cin, cout):  # latency of a 16-wide vector machine
        return 0.02 + 2e-5 * (-(-cin // 16) * 16) * (-(-cout // 16) * 16)

    train = [(int(a), int(b)) for a, b in rng.integers(8, 257, size=(300, 2))]
    test = [(int(a), int(b)) for a, b in rng.integers(8, 257, size=(60, 2)) if (int(a), int(b)) not in train]
    sigs = [LayerSignature(cin=a, cout=b, groups=1, **base) for a, b in train]
    model = LayerLatencyModel(step=16).fit(sigs, [staircase(a, b) for a, b in train])
    test_sigs = [LayerSignature(cin=a, cout=b, groups=1, **base) for a, b in test]
    predicted = model.predict(test_sigs)
    truth = np.array([staircase(a, b) for a, b in test])
    assert np.mean(np.abs(predicted / truth - 1) <= 0.10) >= 0.95
    assert set(model.selection_["conv"]) == {"hist-gbm", "random-forest", "family-linear"}


def test_signature_key_is_the_canonical_json_of_its_own_fields():
    """The database key: sorted keys, tuples as lists; computed once per signature, and a signature made from
    another (dataclasses.replace) or read back from JSON has the key of its own fields."""
    import dataclasses

    from latprune.network.signature import LayerSignature

    sig = LayerSignature("conv", 16, 32, (3, 3), (1, 1), (1, 1), 1, (1, 1), 8, 8, 1, "float32", "ort-cpu", "relu")
    expected = json.dumps(dataclasses.asdict(sig), sort_keys=True, separators=(",", ":"))
    assert sig.key() == expected and sig.key() is sig.key()  # computed once: the same string object
    assert sig.to_json() == dataclasses.asdict(sig) and "_key" not in sig.to_json()
    narrower = dataclasses.replace(sig, cout=8)
    assert narrower.key() == expected.replace('"cout":32', '"cout":8') != sig.key()
    back = LayerSignature.from_json(json.loads(sig.key()))
    assert back == sig and hash(back) == hash(sig) and back.key() == expected
    assert pickle.loads(pickle.dumps(narrower)).key() == narrower.key()


def test_a_layer_signature_carries_the_next_layers_alignment():
    """Measured on ONNX Runtime: a 16->16 conv before a 13-channel layer runs 60% slower than before an aligned
    one (the blocked layout is converted back after it). The signature tells the two apart, from the widths of
    the layer that really runs next; the last layer has none (0)."""
    from latprune.analysis import analyse
    from latprune.network import channel_alignment, layer_signatures
    from latprune.surgery import prune_channels

    assert [channel_alignment(w) for w in (16, 64, 24, 12, 13, 10)] == [16, 16, 8, 4, 1, 2]
    assert channel_alignment(32, 24) == 8
    loaded = load_model("cifar:resnet20")
    analysis = analyse(loaded)
    dense = layer_signatures(loaded.model, analysis.layers, 1, "ort-cpu")
    assert dense["layer1.0.conv2"].next_align == 16 and dense["linear"].next_align == 0
    assert dense["layer3.2.conv2"].next_align == 2  # the classifier: 64 -> 10
    inner = next(g for g in analysis.groups if "layer1.1.conv1" in g.producers)
    pruned = prune_channels(loaded.model, loaded.example_input(), analysis.groups,
                            {inner.id: inner.leading_channels(13)}, branches=analysis.branches)
    after = layer_signatures(pruned, analysis.layers_of(pruned), 1, "ort-cpu")
    assert after["layer1.0.conv2"].next_align == 1  # layer1.1.conv1 now has 13 outputs
    assert after["layer1.1.conv1"].next_align == 1 and after["layer1.1.conv2"].next_align == 16
    assert after["layer1.0.conv2"].family() == dense["layer1.0.conv2"].family()  # the same layer, another context
    assert after["layer1.0.conv2"].key() != dense["layer1.0.conv2"].key()


def test_rows_recorded_before_the_context_read_as_aligned():
    row = json.loads(LayerSignature("conv", 16, 16, (3, 3), (1, 1), (1, 1), 1, (1, 1), 8, 8, 1, "float32",
                                    "ort-cpu", "relu").key())
    del row["next_align"]
    assert LayerSignature.from_json(row).next_align == 16


def test_the_fit_learns_the_cost_of_a_misaligned_next_layer():
    """Layers of one family timed before aligned and misaligned next layers: the model predicts both contexts
    for widths it never saw, instead of averaging them."""
    base = dict(kind="conv", kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), height=16, width=16,
                batch=1, dtype="float32", backend="ort-cpu", epilogue="batch_norm+add+relu")
    rng = np.random.default_rng(1)

    def truth(cin, cout, next_align):
        return 0.01 + 2e-6 * cin * cout + (0.02 if next_align < 8 else 0.0)

    train = [(int(a), int(b), int(n)) for a, b, n in zip(rng.integers(2, 9, 200) * 8, rng.integers(2, 9, 200) * 8,
                                                         rng.choice([1, 2, 16], 200))]
    sigs = [LayerSignature(cin=a, cout=b, groups=1, next_align=n, **base) for a, b, n in train]
    model = LayerLatencyModel(step=8).fit(sigs, [truth(*t) for t in train])
    for cin, cout in ((24, 40), (48, 32)):  # contexts 8 and 4 were never timed
        aligned, misaligned = model.predict([LayerSignature(cin=cin, cout=cout, groups=1, next_align=n, **base)
                                             for n in (8, 4)])
        assert aligned == pytest.approx(truth(cin, cout, 8), rel=0.1)
        assert misaligned == pytest.approx(truth(cin, cout, 4), rel=0.1)


def test_layers_the_overhead_subtraction_ate_do_not_pull_the_fit_to_zero():
    """A family of 1x1 convolutions timed at many widths, a few stored at 0 ms and one at a sliver of its time (what
    an over-subtracted profiler overhead left): predictions stay on the family's line, and a zero row is no
    measurement to answer with."""
    base = dict(kind="conv", kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1), height=14, width=14,
                batch=1, dtype="float32", backend="ort-cpu", epilogue="batch_norm+add")
    rng = np.random.default_rng(2)

    def truth(cin, cout):
        return 0.004 + 1.1e-6 * cin * cout

    pairs = sorted({(int(a), int(b)) for a, b in zip(rng.integers(3, 31, 120) * 16, rng.integers(1, 8, 120) * 16)})
    times = [truth(*p) for p in pairs]
    for i in (0, 7, 19, 33):
        times[i] = 0.0
    times[50] = 2e-4
    sigs = [LayerSignature(cin=a, cout=b, groups=1, **base) for a, b in pairs]
    for estimator in ("family-linear", "auto"):
        model = LayerLatencyModel(estimator=estimator, step=16).fit(sigs, times)
        queries = [(464, 80), (640, 112), (96, 32)]
        predicted = model.predict([LayerSignature(cin=a, cout=b, groups=1, **base) for a, b in queries])
        assert predicted == pytest.approx([truth(*q) for q in queries], rel=0.15)
        assert model.predict([sigs[7]])[0] == pytest.approx(truth(*pairs[7]), rel=0.15)
