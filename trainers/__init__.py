"""DALI's training stages as Trainer subclasses, and their objectives."""

from .alignment import SCORERS_NAME, AlignmentConfig, DistributionAlignmentTrainer
from .collators import AlignmentCollator, CaptionCollator
from .distillation import AudioVisualDistillationTrainer, DistillationConfig
from .lean import LlavaAudioAlignmentModel, load_alignment_model
from .objectives import AttentiveMarginals, contrastive_loss, lambda_schedule, mmd_loss, ot_loss
from .prefix import PrefixTuningConfig, PrefixTuningTrainer
from .pseudo_captions import attach_captions, generate_pseudo_captions
from .streaming import AlignmentStream

__all__ = [
    "SCORERS_NAME",
    "AlignmentCollator",
    "AlignmentConfig",
    "AlignmentStream",
    "AttentiveMarginals",
    "AudioVisualDistillationTrainer",
    "CaptionCollator",
    "DistillationConfig",
    "DistributionAlignmentTrainer",
    "LlavaAudioAlignmentModel",
    "PrefixTuningConfig",
    "PrefixTuningTrainer",
    "attach_captions",
    "contrastive_loss",
    "generate_pseudo_captions",
    "lambda_schedule",
    "load_alignment_model",
    "mmd_loss",
    "ot_loss",
]
