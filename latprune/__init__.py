"""latprune: latency-aware pruning planner for convolutional networks.

The stages (``latprune.pipeline``): load and analyse a model (``analysis``), profile the
device (``profiler``), fit the performance model (``perfmodel``), plan widths for a budget
(``planner``), prune, repair (``recovery``), export, measure, evaluate and report. Shared
vocabulary lives in ``latprune.network``; see docs/architecture.md.
"""

__version__ = "0.1.0"
