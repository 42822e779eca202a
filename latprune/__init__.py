"""latprune: latency-aware pruning planner for convolutional networks."""

__version__ = "0.1.0"
