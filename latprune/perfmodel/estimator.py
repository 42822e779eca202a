"""Estimator-style latency models: ``fit`` on the profile, ``predict`` answers.

``LayerLatencyModel`` predicts a layer's in-network time from its signature. Per layer
kind it compares candidate regressors on held-out (cin, cout) pairs and keeps the best;
a signature that was measured is answered with its measurement. ``NetworkLatencyModel``
sums layer predictions and adds a per-model overhead fitted on whole-network timings.
Fitted state lives in attributes ending in ``_``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from latprune.perfmodel.features import bytes_moved, feature_matrix, next_off_grid
from latprune.network import LayerSignature


@dataclass(frozen=True)
class CostTerms:
    """A whole-network latency prediction split into what the planner sums: a constant and per-layer costs."""

    constant_ms: float
    layer_ms: Callable[[Sequence[LayerSignature]], np.ndarray]


def _weighted_lstsq(design: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(design * weights[:, None], y * weights, rcond=None)[0]


def _relative_lstsq(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares on relative errors (each row weighted by 1 / y)."""
    return _weighted_lstsq(design, y, 1.0 / y)


# A row this many times off its family's line is left out of the family's fit.
OUTLIER_FACTOR = 3.0


def _robust_relative_lstsq(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`_relative_lstsq` without the rows far off the line: a first fit weighs every row by at least the median
    time (so a row far below its family, a layer time the profiler's overhead subtraction mostly ate, cannot pull it
    to itself; on relative errors one such row at 1/200 of its time bent a whole family to about zero), rows more
    than :data:`OUTLIER_FACTOR` off that fit are left out, and the rest fitted on relative errors."""
    first = _weighted_lstsq(design, y, 1.0 / np.maximum(y, np.median(y)))
    line = np.maximum(design @ first, 1e-9)
    keep = (y * OUTLIER_FACTOR >= line) & (y <= OUTLIER_FACTOR * line)
    if keep.sum() < max(design.shape[1], len(y) // 2):  # the first fit is no line to judge rows by
        keep[:] = True
    return _relative_lstsq(design[keep], y[keep])


class LogTarget:
    """Wrap a regressor to fit log(ms): relative errors matter at every scale."""

    def __init__(self, make: Callable[[], object], step: int):
        self.make, self.step = make, step

    def fit(self, signatures, ms):
        self.model_ = self.make().fit(feature_matrix(signatures, self.step), np.log(ms))
        return self

    def predict(self, signatures):
        return np.exp(self.model_.predict(feature_matrix(signatures, self.step)))



class FamilyLinear:
    """Per layer family (all but the widths fixed): ms ~ linear in padded MACs, bytes and misalignment (its
    own and the next layer's), rows far off the family's line left out (:func:`_robust_relative_lstsq`).

    Families with too few points, and unseen ones, fall back to gradient boosting.
    """

    MIN_POINTS = 8

    def __init__(self, step: int):
        self.step = step

    def _design(self, signatures) -> np.ndarray:
        return np.array([[1.0, s.padded_macs(self.step) * 1e-6, bytes_moved(s) * 1e-6,
                          float(s.cin % self.step != 0), float(s.cout % self.step != 0), next_off_grid(s, self.step)]
                         for s in signatures])

    def fit(self, signatures, ms):
        self.fallback_ = LogTarget(_hist_gbm, self.step).fit(signatures, ms)
        groups = defaultdict(list)
        for i, s in enumerate(signatures):
            groups[s.family()].append(i)
        self.coef_ = {}
        ms = np.asarray(ms)
        for family, idx in groups.items():
            if len(idx) >= self.MIN_POINTS:
                self.coef_[family] = _robust_relative_lstsq(self._design([signatures[i] for i in idx]), ms[idx])
        return self

    def predict(self, signatures):
        out = np.empty(len(signatures))
        fallback = [i for i, s in enumerate(signatures) if s.family() not in self.coef_]
        if fallback:
            out[fallback] = self.fallback_.predict([signatures[i] for i in fallback])
        for i, s in enumerate(signatures):
            coef = self.coef_.get(s.family())
            if coef is not None:
                out[i] = max(float(self._design([s])[0] @ coef), 1e-4)
        return out


def _hist_gbm():
    return HistGradientBoostingRegressor(max_iter=400, learning_rate=0.08, min_samples_leaf=5, random_state=0)


def _random_forest():
    return RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=0, n_jobs=1)


CANDIDATES: dict[str, Callable[[int], object]] = {
    "hist-gbm": lambda step: LogTarget(_hist_gbm, step),
    "random-forest": lambda step: LogTarget(_random_forest, step),
    "family-linear": lambda step: FamilyLinear(step),
}


def relative_errors(predicted: np.ndarray, measured: np.ndarray) -> dict:
    rel = np.abs(np.asarray(predicted) / np.asarray(measured) - 1)
    return {"mape": float(rel.mean()), "p95": float(np.quantile(rel, 0.95)) if len(rel) else 0.0,
            "within_10pct": float((rel <= 0.10).mean()), "n": int(len(rel))}


class LayerLatencyModel:
    """Predicts a layer's in-network latency (ms) from its :class:`LayerSignature`."""

    def __init__(self, estimator: str = "auto", step: int = 16, holdout: float = 0.2, seed: int = 0):
        if estimator != "auto" and estimator not in CANDIDATES:
            raise ValueError(f"unknown estimator {estimator!r}; choose auto or one of {', '.join(CANDIDATES)}")
        self.estimator, self.step, self.holdout, self.seed = estimator, step, holdout, seed

    def fit(self, signatures: Sequence[LayerSignature], times_ms: Sequence[float]) -> "LayerLatencyModel":
        # A layer stored at 0 ms is no measurement: the profiler's per-node overhead subtraction ate it (profiles
        # taken before that subtraction was capped hold such rows). It is neither fitted nor answered as measured.
        timed = [(s, float(t)) for s, t in zip(signatures, times_ms) if t > 0]
        signatures, times_ms = [s for s, _ in timed], np.array([t for _, t in timed], dtype=float)
        self.measured_ = {s.key(): float(t) for s, t in zip(signatures, times_ms)}
        by_kind: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(signatures):
            by_kind[s.kind].append(i)
        self.models_, self.chosen_, self.selection_ = {}, {}, {}
        rng = np.random.default_rng(self.seed)
        for kind, idx in by_kind.items():
            sigs = [signatures[i] for i in idx]
            ms = np.array([times_ms[i] for i in idx], dtype=float)
            names = list(CANDIDATES) if self.estimator == "auto" else [self.estimator]
            scores = {}
            if len(sigs) >= 20:
                test = rng.random(len(sigs)) < self.holdout
                train_sigs = [s for s, t in zip(sigs, test) if not t]
                test_sigs = [s for s, t in zip(sigs, test) if t]
                for name in names:
                    model = CANDIDATES[name](self.step).fit(train_sigs, ms[~test])
                    scores[name] = relative_errors(model.predict(test_sigs), ms[test])
                best = min(scores, key=lambda n: scores[n]["mape"])
            else:
                best = "family-linear" if self.estimator == "auto" else self.estimator
            self.selection_[kind] = scores
            self.chosen_[kind] = best
            self.models_[kind] = CANDIDATES[best](self.step).fit(sigs, ms) if len(sigs) >= 2 else None
        return self

    def predict(self, signatures: Sequence[LayerSignature], use_measured: bool = True) -> np.ndarray:
        out = np.full(len(signatures), np.nan)
        pending: dict[str, list[int]] = defaultdict(list)
        for i, s in enumerate(signatures):
            measured = self.measured_.get(s.key()) if use_measured else None
            if measured is not None:
                out[i] = measured
            else:
                pending[s.kind].append(i)
        for kind, idx in pending.items():
            model = self.models_.get(kind)
            if model is None:
                raise ValueError(f"no profile data for {kind} layers on this backend; run `latprune profile` first")
            out[idx] = model.predict([signatures[i] for i in idx])
        return out


class NetworkLatencyModel:
    """Whole-network latency: sum of layer predictions, then ``a + b * sum`` per model.

    ``a`` and ``b`` are fitted on the whole-network timings of a model's pruned variants
    (not the dense model alone); a model without such timings gets a = 0, b = 1.
    """

    def __init__(self, layers: LayerLatencyModel):
        self.layers = layers

    def fit(self, networks: Sequence[tuple[str, Sequence[LayerSignature], float]]) -> "NetworkLatencyModel":
        """``networks``: (model key, the variant's layer signatures, measured whole ms)."""
        by_model: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for key, signatures, measured in networks:
            by_model[key].append((float(self.layers.predict(signatures).sum()), measured))
        self.overhead_ = {}
        for key, points in by_model.items():
            x = np.array([p[0] for p in points])
            y = np.array([p[1] for p in points])
            if len(points) >= 3 and np.ptp(x) > 0:
                a, b = _relative_lstsq(np.stack([np.ones_like(x), x], axis=1), y)
            else:
                a, b = float(np.median(y - x)), 1.0
            self.overhead_[key] = (float(a), float(b), len(points))
        return self

    def predict(self, model_key: str, signatures: Sequence[LayerSignature], use_measured: bool = True) -> float:
        a, b = self.affine(model_key)
        return a + b * float(self.layers.predict(signatures, use_measured=use_measured).sum())

    def cost_terms(self, model_key: str) -> CostTerms:
        """The prediction for ``model_key`` as a constant plus a cost per layer, for the planner:
        ``predict(key, signatures) == constant_ms + layer_ms(signatures).sum()``."""
        a, b = self.affine(model_key)
        return CostTerms(constant_ms=a, layer_ms=lambda signatures: b * self.layers.predict(signatures))

    def affine(self, model_key: str) -> tuple[float, float]:
        """(a, b) with whole-network ms = a + b * sum of layer predictions."""
        a, b, _ = self.overhead_.get(model_key, (0.0, 1.0, 0))
        return a, b

    def knows(self, model_key: str) -> bool:
        return model_key in self.overhead_
