"""Recovery: repair a pruned network's accuracy from unlabeled calibration images, without retraining."""

from latprune.recovery.batchnorm import recalibrate_batchnorm
from latprune.recovery.pipeline import METHODS, RecoveryReport, parse_recipe, recover
from latprune.recovery.reconstruction import ReconstructionSettings

__all__ = ["METHODS", "ReconstructionSettings", "RecoveryReport", "parse_recipe", "recalibrate_batchnorm", "recover"]
