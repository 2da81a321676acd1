"""Stage 2 of DALI: audiovisual distillation (docs/method.md, section 5).

The pseudo-captions come first ([`generate_pseudo_captions`], in `pseudo_captions.py`: image + audio tokens + prefix
caption each (audio, frame) pair). [`AudioVisualDistillationTrainer`] then fine-tunes only the audio projector with
the language-model loss on them, from audio alone and without the prefix. The image path stays LLaVA's.
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from .collators import CaptionCollator
from .lora import inject_lora, merge_lora
from .pseudo_captions import PSEUDO_CAPTIONS_FILE, SKIPPED_FILE, attach_captions, generate_pseudo_captions
from .stages import CaptionStageTrainer

__all__ = [
    "DistillationConfig",
    "AudioVisualDistillationTrainer",
    # defined in pseudo_captions.py and lora.py; importable from here as before
    "generate_pseudo_captions",
    "attach_captions",
    "merge_lora",
    "PSEUDO_CAPTIONS_FILE",
    "SKIPPED_FILE",
]


@dataclass
class DistillationConfig(TrainingArguments):
    """Defaults of the reference code: lr 2e-4, cosine, warmup 3%, 1 epoch (paper: batch 40)."""

    prompt: str | None = field(default=None, metadata={"help": "instruction; default: the processor's"})
    prompt_preset: str | None = field(default=None, metadata={"help": "system texts: 'llava' (none) or 'reference' "
                                                                      "(the authors'); default: the processor's"})
    use_prefix: bool = field(default=False, metadata={"help": "keep the learned prefix in the audio prompt"})
    learning_rate: float = field(default=2e-4)
    lr_scheduler_type: str = field(default="cosine")
    warmup_ratio: float = field(default=0.03)
    num_train_epochs: float = field(default=1.0)
    remove_unused_columns: bool = field(default=False)
    lora_r: int = field(default=0, metadata={"help": "rank of LoRA adapters on the language model; 0 = off (the "
                                                     "paper trains the audio projector only)"})
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


class AudioVisualDistillationTrainer(CaptionStageTrainer):
    """Trains `audio_multi_modal_projector` on (audio, caption) rows: "USER: <audio>\\n{prompt} ASSISTANT:".

    With `lora_r > 0` (an extension, off by default) LoRA adapters on the language model train too, through peft;
    the final `save_model` merges them, so the output is a plain LlavaAudio folder. LoRA changes the language model,
    so image captioning is then no longer exactly LLaVA's.
    """

    trained_part = "audio_multi_modal_projector"
    stage_name = "distillation"
    card_fields = ("prompt", "prompt_preset", "use_prefix", "lora_r", "lr_scheduler_type", "warmup_ratio")

    def __init__(self, model=None, args=None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        if getattr(self.args, "lora_r", 0) > 0:
            inject_lora(self.model.model.language_model, self.args.lora_r, self.args.lora_alpha,
                        self.args.lora_dropout, self.args.lora_target_modules)

    def build_collator(self, processor, args):
        return CaptionCollator(processor, audio=True, prefix=getattr(args, "use_prefix", False),
                               prompt=getattr(args, "prompt", None), prompt_preset=getattr(args, "prompt_preset", None))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _internal_call and getattr(self.args, "lora_r", 0) > 0:
            merge_lora(self.model.model.language_model)  # the final folder: plain weights
        super().save_model(output_dir, _internal_call)

