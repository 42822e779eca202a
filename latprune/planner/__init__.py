"""Planner: channel importance, candidate widths, and the budgeted dynamic program that picks widths.

Entry point: :mod:`latprune.planner.api` (``prepare`` a :class:`~latprune.analysis.ModelAnalysis`
with the performance model's :class:`~latprune.perfmodel.CostTerms`, then ``latency_plan`` or a
baseline for a resolved :class:`~latprune.budget.Budget`), giving a :class:`~latprune.planner.plan.Plan`.
"""
