"""DALI's training stages as Trainer subclasses (`STAGES`, from `dali_hf.modeling.vocabulary`, names them), their
configs (the two captioning stages' share `CaptionStageConfig`, in `arguments.py`), collators and objectives
(`objectives/`), and the language-model-free model that alignment trains (`lean.py`).

May import `dali_hf.modeling` and `dali_hf.model_cards`, never dali_hf's top-level modules (which import this).
Libraries do what they do: distillation's LoRA is peft's (`lora.py`: injected, then merged by `merge_and_unload`), and
modules log through transformers' `logging.get_logger(__name__)`, as modeling/ does."""

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
