"""Recovery: repair a pruned network's accuracy from calibration images (post-training, or a short fine-tune)."""

from latprune.recovery.batchnorm import recalibrate_batchnorm
from latprune.recovery.finetune import FinetuneSettings
from latprune.recovery.pipeline import FINETUNES, METHODS, RecoveryReport, parse_recipe, recover
from latprune.recovery.reconstruction import ReconstructionSettings

__all__ = ["FINETUNES", "METHODS", "FinetuneSettings", "ReconstructionSettings", "RecoveryReport", "parse_recipe",
           "recalibrate_batchnorm", "recover"]
