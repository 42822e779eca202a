"""Defaults shared by the commands and the end-to-end job (kept import-free so the CLI starts fast)."""

IMPORTANCE_CALIB_SIZE = 256  # images scored for data-driven channel importance
RECOVERY_CALIB_SIZE = 1024  # images for post-training recovery
# Calibration images beyond recovery's on which the search's last stage scores its finalists after that recovery
# (benchmarks/results/plan_proxy_resnet56.md: on 1,024 such images it ranked 58 of 58 plan pairs right).
SELECTION_IMAGES = 1024
MIN_SELECTION_IMAGES = 256  # fewer beyond recovery's: the last stage is skipped (one image would be 0.4 points)
RECOVERED_PLANS = 2  # structures whose best plan the last stage recovers (0 or 1: no last stage)
# Two-stage's time box: cifar resnet56 needs 100 s on 2 cores; EfficientNet-Lite0 at 224x224 would take 40 min.
RECOVERY_SECONDS = 600.0
DEFAULT_RECOVERY = "two-stage"  # the best post-training recovery in benchmarks/results/recovery_structured.md
PLANNERS = ("latency", "flops", "uniform", "tp-global")  # the latency DP and its baselines, by CLI name
OBJECTIVES = ("importance", "calibrated")  # what the latency planner maximises, by CLI name
SEARCH_SECONDS = 60.0  # time box of each plan family in the calibrated search (up to three with removable branches)
# Names the CLI offers before it imports the stages (tests/test_architecture.py checks them against the registries).
IMPORTANCE_CRITERIA = ("l1", "l2", "bn", "taylor", "sensitivity")  # latprune.planner.importance.CRITERIA
RECOVERY_METHODS = ("none", "two-stage", "ridge", "ridge-tuned", "bn", "layerwise", "asr", "finetune", "overparam")
LOOP_TOL = 0.03  # the closed loop's band: measured latency in [(1 - tol) x budget, budget]
LOOP_MAX_ROUNDS = 4  # most plans the closed loop measures
UNVERIFIED_MARGIN = 0.03  # headroom below the budget when a plan is only predicted (--no-verify)
