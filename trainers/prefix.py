"""Stage 1a of DALI: prefix tuning. Only the 16 prefix embeddings train, with the language-model loss on the sound
captions of a handful of (video frame, sound caption) pairs (docs/method.md, section 2):

    L = - sum_n sum_j log p(C_j | image tokens, prefix, prompt, C_<j)
"""

from dataclasses import dataclass, field

from .arguments import CaptionStageConfig, keep_columns_field, prompt_field
from .collators import CaptionCollator
from .stages import CaptionStageTrainer

__all__ = ["PrefixTuningConfig", "PrefixTuningTrainer"]


@dataclass
class PrefixTuningConfig(CaptionStageConfig):
    r"""
    Configuration class for [`PrefixTuningTrainer`], stage 1a of DALI: learn the prefix embeddings on (video frame,
    sound caption) pairs (docs/method.md, section 2).

    This class includes only the parameters that are specific to prefix tuning, and those whose defaults differ from
    [`~transformers.TrainingArguments`]: the settings of the authors' code (the paper: 500 epochs at batch 16). For
    the other training arguments, see [`~transformers.TrainingArguments`]. Using [`~transformers.HfArgumentParser`],
    this class gives the flags of `dali-hf prefix-tune`.

    Parameters:
        > Parameters that control the prompt

        prompt (`str` or `None`, *optional*, defaults to `None`):
            Instruction after the image tokens and the prefix; `None` means the processor's `default_prompt`
            ("Describe the sound that can be heard in this scene.").
        prompt_preset (`str` or `None`, *optional*, defaults to `None`):
            System text put before the prompt: `"llava"` (none) or `"reference"` (that of the authors' training
            code); `None` means the processor's `prompt_preset`.

        > Parameters whose defaults differ from TrainingArguments

        learning_rate (`float`, *optional*, defaults to `1e-3`):
            Initial learning rate of the optimiser (the authors' code: 1e-3; the paper says 2e-4).
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`):
            Learning-rate schedule (the authors' code: cosine).
        warmup_steps (`float`, *optional*, defaults to `0.03`):
            Linear warm-up of the learning rate from 0: below 1, a share of the optimiser steps (the authors' code:
            0.03); 1 or more, a number of steps. The model card records the steps it came to.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep every dataset column: the collator reads `image` and `caption`, which the model's forward does not
            name.
    """

    # Parameters that control the prompt (`prompt_preset`: CaptionStageConfig's)
    prompt: str | None = prompt_field("the image tokens and the prefix")

    # Parameters whose defaults differ from TrainingArguments (the schedule's: CaptionStageConfig's)
    learning_rate: float = field(
        default=1e-3,
        metadata={"help": "Initial learning rate of the optimiser (the authors' code: 1e-3; the paper says 2e-4)."},
    )
    remove_unused_columns: bool = keep_columns_field("`image` and `caption`")


class PrefixTuningTrainer(CaptionStageTrainer):
    """Trains `prefix_embeddings` on (image, caption) rows: prompt "USER: <image><prefix>\\n{prompt} ASSISTANT:"."""

    trained_part = "prefix_embeddings"
    stage_name = "prefix-tune"
    card_fields = ("prompt", "prompt_preset", "lr_scheduler_type")

    def build_collator(self, processor, args):
        return CaptionCollator(processor, image=True, prefix=True, prompt=getattr(args, "prompt", None),
                               prompt_preset=getattr(args, "prompt_preset", None))
