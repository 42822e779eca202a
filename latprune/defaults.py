"""Defaults shared by the commands and the end-to-end job (kept import-free so the CLI starts fast)."""

IMPORTANCE_CALIB_SIZE = 256  # images scored for data-driven channel importance
RECOVERY_CALIB_SIZE = 1024  # images for post-training recovery
DEFAULT_RECOVERY = "two-stage"  # the best post-training recovery in benchmarks/results/recovery_structured.md
PLANNERS = ("latency", "flops", "uniform", "tp-global")  # the latency DP and its baselines, by CLI name
OBJECTIVES = ("importance", "calibrated")  # what the latency planner maximises, by CLI name
SEARCH_SECONDS = 60.0  # time box of the calibrated search: cifar resnet56 plans in about 2-3 minutes on 2 cores
