"""Performance model: predicts layer and whole-network latency from the profile.

Public entry points: :func:`current_perf_model` / :func:`fit_perf_model` (in ``api``), the
estimators :class:`NetworkLatencyModel` and :class:`LayerLatencyModel`, and
:class:`CostTerms`, the prediction split into what the planner sums.
"""

from latprune.perfmodel.estimator import CostTerms, LayerLatencyModel, NetworkLatencyModel

__all__ = ["CostTerms", "LayerLatencyModel", "NetworkLatencyModel"]
