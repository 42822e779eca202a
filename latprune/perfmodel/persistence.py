"""A fitted performance model as bytes, in formats that run no code.

One zip per device and backend: ``fit.json`` (the profile hash and library versions it was
fitted under, the fit summary, every parameter that is plain numbers) and one ``.skops``
entry per scikit-learn regressor. Regressors are read back with skops, trusting
scikit-learn's own tree types only, so a crafted file cannot execute code; anything
unreadable is treated as no fit (the caller refits from the profile rows). The profile
store keeps the bytes: a file beside a SQLite profile (``profiles.sqlite.perfmodels/``), a
table of a server store.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import skops.io

from latprune.perfmodel.estimator import FamilyLinear, LayerLatencyModel, LogTarget, NetworkLatencyModel

FORMAT = "latprune-perfmodel"
FORMAT_VERSION = 3  # 2: layer features include the next layer's alignment; 3: 0 ms rows left out, robust family lines
# Types inside scikit-learn's regressors that skops does not trust by default; nothing else is accepted.
TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", "sklearn.tree._tree.Tree"]


class UnreadableFit(Exception):
    """A stored fit that cannot be read back (corrupt, foreign or of another format)."""


def fit_bytes(model: NetworkLatencyModel, profile_hash: str, versions: dict, summary: dict) -> bytes:
    """The fit as a zip archive's bytes."""
    blobs: dict[str, bytes] = {}
    state = {"format": FORMAT, "version": FORMAT_VERSION, "profile_hash": profile_hash, "versions": versions,
             "summary": summary, "model": _network_state(model, blobs)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fit.json", json.dumps(state))
        for name, blob in blobs.items():
            archive.writestr(name, blob)
    return buffer.getvalue()


def read_fit_bytes(data: bytes | None, source: str) -> tuple[str, dict, dict, NetworkLatencyModel] | None:
    """(profile hash, versions, summary, model) of a stored fit; None if there is none.

    Raises :class:`UnreadableFit` (naming ``source``) for bytes that are not a readable fit of this format.
    """
    if data is None:
        return None
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            state = json.loads(archive.read("fit.json"))
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise UnreadableFit(f"{source} is not a latprune performance model")
            if state.get("version") != FORMAT_VERSION:
                raise UnreadableFit(f"{source} holds a fit of format {state.get('version')!r}, made by another "
                                    f"latprune; this one reads format {FORMAT_VERSION}")
            model = _network_from_state(state["model"], archive)
        return state["profile_hash"], state["versions"], state["summary"], model
    except UnreadableFit:
        raise
    except Exception as exc:  # zip, JSON, skops and shape errors alike: the bytes are not usable
        raise UnreadableFit(f"{source}: {type(exc).__name__}: {exc}") from None


def _network_state(model: NetworkLatencyModel, blobs: dict[str, bytes]) -> dict:
    layers = model.layers
    kinds = {kind: _estimator_state(estimator, kind, blobs) for kind, estimator in layers.models_.items()}
    return {
        "settings": {"estimator": layers.estimator, "step": layers.step, "holdout": layers.holdout,
                     "seed": layers.seed},
        "measured": layers.measured_, "chosen": layers.chosen_, "selection": layers.selection_, "kinds": kinds,
        "overhead": {k: list(v) for k, v in model.overhead_.items()},
    }


def _estimator_state(estimator, name: str, blobs: dict[str, bytes]) -> dict | None:
    if estimator is None:
        return None
    if isinstance(estimator, LogTarget):
        blobs[f"{name}.skops"] = skops.io.dumps(estimator.model_)
        return {"type": "log-target", "step": estimator.step, "entry": f"{name}.skops"}
    if isinstance(estimator, FamilyLinear):
        return {"type": "family-linear", "step": estimator.step,
                "coef": [[list(map(list, family)), list(map(float, coef))] for family, coef in estimator.coef_.items()],
                "fallback": _estimator_state(estimator.fallback_, f"{name}.fallback", blobs)}
    raise TypeError(f"cannot store estimator {type(estimator).__name__}")


def _network_from_state(state: dict, archive: zipfile.ZipFile) -> NetworkLatencyModel:
    layers = LayerLatencyModel(**state["settings"])
    layers.measured_ = {str(k): float(v) for k, v in state["measured"].items()}
    layers.chosen_, layers.selection_ = dict(state["chosen"]), dict(state["selection"])
    layers.models_ = {kind: _estimator_from_state(s, archive) for kind, s in state["kinds"].items()}
    model = NetworkLatencyModel(layers)
    model.overhead_ = {k: (float(v[0]), float(v[1]), int(v[2])) for k, v in state["overhead"].items()}
    return model


def _estimator_from_state(state: dict | None, archive: zipfile.ZipFile):
    if state is None:
        return None
    if state["type"] == "log-target":
        estimator = LogTarget(None, int(state["step"]))
        estimator.model_ = skops.io.loads(archive.read(state["entry"]), trusted=TRUSTED_TYPES)
        return estimator
    if state["type"] == "family-linear":
        estimator = FamilyLinear(int(state["step"]))
        estimator.coef_ = {tuple(tuple(pair) for pair in family): np.asarray(coef, dtype=float)
                           for family, coef in state["coef"]}
        estimator.fallback_ = _estimator_from_state(state["fallback"], archive)
        return estimator
    raise UnreadableFit(f"unknown estimator type {state['type']!r}")

