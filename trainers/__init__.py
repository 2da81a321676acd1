"""DALI's training stages as Trainer subclasses, and their objectives."""

from .alignment import SCORERS_NAME, AlignmentConfig, DistributionAlignmentTrainer
from .collators import AlignmentCollator
from .objectives import AttentiveMarginals, contrastive_loss, lambda_schedule, mmd_loss, ot_loss

__all__ = [
    "SCORERS_NAME",
    "AlignmentCollator",
    "AlignmentConfig",
    "AttentiveMarginals",
    "DistributionAlignmentTrainer",
    "contrastive_loss",
    "lambda_schedule",
    "mmd_loss",
    "ot_loss",
]
