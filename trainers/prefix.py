"""Stage 1a of DALI: prefix tuning. Only the 16 prefix embeddings train, with the language-model loss on the sound
captions of a handful of (video frame, sound caption) pairs (docs/method.md, section 2):

    L = - sum_n sum_j log p(C_j | image tokens, prefix, prompt, C_<j)
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .collators import CaptionCollator
from .stages import CaptionStageTrainer

__all__ = ["PrefixTuningConfig", "PrefixTuningTrainer"]


@dataclass
class PrefixTuningConfig(TrainingArguments):
    """Defaults of the reference code: lr 1e-3, cosine, warmup 3%, AdamW (paper: 500 epochs at batch 16)."""

    prompt: str | None = field(default=None, metadata={"help": "instruction; default: the processor's"})
    prompt_preset: str | None = field(default=None, metadata={"help": "system texts: 'llava' (none) or 'reference' "
                                                                      "(the authors'); default: the processor's"})
    learning_rate: float = field(default=1e-3)
    lr_scheduler_type: str = field(default="cosine")
    warmup_ratio: float = field(default=0.03)
    remove_unused_columns: bool = field(default=False)


class PrefixTuningTrainer(CaptionStageTrainer):
    """Trains `prefix_embeddings` on (image, caption) rows: prompt "USER: <image><prefix>\\n{prompt} ASSISTANT:"."""

    trained_part = "prefix_embeddings"
    stage_name = "prefix-tune"
    card_fields = ("prompt", "prompt_preset", "lr_scheduler_type", "warmup_ratio")

    def build_collator(self, processor, args):
        return CaptionCollator(processor, image=True, prefix=True, prompt=getattr(args, "prompt", None),
                               prompt_preset=getattr(args, "prompt_preset", None))
