"""Stage 2 of DALI: audiovisual distillation (docs/method.md, section 5).

The pseudo-captions come first ([`generate_pseudo_captions`], in `pseudo_captions.py`: image + audio tokens + prefix
caption each (audio, frame) pair). [`AudioVisualDistillationTrainer`] then fine-tunes only the audio projector with
the language-model loss on them, from audio alone and without the prefix. The image path stays LLaVA's.
"""

from dataclasses import dataclass, field

from .arguments import CaptionStageConfig, keep_columns_field, prompt_field
from .collators import CaptionCollator
from .lora import inject_lora, merge_lora
from .pseudo_captions import PSEUDO_CAPTIONS_FILE, SKIPPED_FILE, attach_captions, generate_pseudo_captions
from .stages import CaptionStageTrainer

__all__ = [
    "DistillationConfig",
    "AudioVisualDistillationTrainer",
    # defined in pseudo_captions.py (and merge_lora in lora.py); importable from here as before
    "generate_pseudo_captions",
    "attach_captions",
    "PSEUDO_CAPTIONS_FILE",
    "SKIPPED_FILE",
]


@dataclass
class DistillationConfig(CaptionStageConfig):
    r"""
    Configuration class for [`AudioVisualDistillationTrainer`], stage 2 of DALI: fine-tune the audio projector on
    pseudo-captions, from audio alone (docs/method.md, section 5).

    This class includes only the parameters that are specific to distillation, and those whose defaults differ from
    [`~transformers.TrainingArguments`]: the settings of the authors' code (the paper: batch 40). For the other
    training arguments, see [`~transformers.TrainingArguments`]. Using [`~transformers.HfArgumentParser`], this class
    gives the flags of `dali-hf distill`.

    Parameters:
        > Parameters that control the prompt

        prompt (`str` or `None`, *optional*, defaults to `None`):
            Instruction after the audio tokens; `None` means the processor's `default_prompt` ("Describe the sound
            that can be heard in this scene.").
        prompt_preset (`str` or `None`, *optional*, defaults to `None`):
            System text put before the prompt: `"llava"` (none) or `"reference"` (that of the authors' training
            code); `None` means the processor's `prompt_preset`.
        use_prefix (`bool`, *optional*, defaults to `False`):
            Keep the learned prefix after the audio tokens (the authors' code distils without it).

        > Parameters that control LoRA on the language model (an extension)

        lora_r (`int`, *optional*, defaults to `0`):
            Rank of LoRA adapters on the language model, trained with the audio projector and merged into it when
            the model is saved; 0 turns them off (the paper trains the audio projector only). With LoRA, image
            captioning is no longer exactly LLaVA's.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling: the adapters' update is multiplied by `lora_alpha / lora_r`.
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            Dropout on the adapters' input.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q_proj", "v_proj"]`):
            Names of the language model's linear layers that get adapters.

        > Parameters whose defaults differ from TrainingArguments

        learning_rate (`float`, *optional*, defaults to `2e-4`):
            Initial learning rate of the optimiser (the authors' code: 2e-4).
        lr_scheduler_type (`str`, *optional*, defaults to `"cosine"`):
            Learning-rate schedule (the authors' code: cosine).
        warmup_steps (`float`, *optional*, defaults to `0.03`):
            Linear warm-up of the learning rate from 0: below 1, a share of the optimiser steps (the authors' code:
            0.03); 1 or more, a number of steps. The model card records the steps it came to.
        num_train_epochs (`float`, *optional*, defaults to `1.0`):
            Passes over the pseudo-captioned clips (the authors' code: 1).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep every dataset column: the collator reads `audio` and `caption`, which the model's forward does not
            name.
    """

    # Parameters that control the prompt (`prompt_preset`: CaptionStageConfig's)
    prompt: str | None = prompt_field("the audio tokens")
    use_prefix: bool = field(
        default=False,
        metadata={"help": "Keep the learned prefix after the audio tokens (the authors' code distils without it)."},
    )

    # Parameters that control LoRA on the language model (an extension)
    lora_r: int = field(
        default=0,
        metadata={"help": "Rank of LoRA adapters on the language model, trained with the audio projector and merged "
                          "into it when the model is saved; 0 turns them off (the paper trains the audio projector "
                          "only). With LoRA, image captioning is no longer exactly LLaVA's."},
    )
    lora_alpha: int = field(
        default=16,
        metadata={"help": "LoRA scaling: the adapters' update is multiplied by `lora_alpha / lora_r`."},
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Names of the language model's linear layers that get adapters."},
    )

    # Parameters whose defaults differ from TrainingArguments (the schedule's: CaptionStageConfig's)
    learning_rate: float = field(
        default=2e-4, metadata={"help": "Initial learning rate of the optimiser (the authors' code: 2e-4)."}
    )
    num_train_epochs: float = field(
        default=1.0, metadata={"help": "Passes over the pseudo-captioned clips (the authors' code: 1)."}
    )
    remove_unused_columns: bool = keep_columns_field("`audio` and `caption`")


class AudioVisualDistillationTrainer(CaptionStageTrainer):
    """Trains `audio_multi_modal_projector` on (audio, caption) rows: "USER: <audio>\\n{prompt} ASSISTANT:".

    With `lora_r > 0` (an extension, off by default) LoRA adapters on the language model train too, through peft;
    the final `save_model` merges them, so the output is a plain LlavaAudio folder. LoRA changes the language model,
    so image captioning is then no longer exactly LLaVA's.
    """

    trained_part = "audio_multi_modal_projector"
    stage_name = "distill"
    card_fields = ("prompt", "prompt_preset", "use_prefix", "lora_r", "lr_scheduler_type")

    def __init__(self, model=None, args=None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        self.lora_model = None  # peft's LoraModel around the language model, when adapters train
        if getattr(self.args, "lora_r", 0) > 0:
            self.lora_model = inject_lora(self.model.model.language_model, self.args.lora_r, self.args.lora_alpha,
                                          self.args.lora_dropout, self.args.lora_target_modules)

    def build_collator(self, processor, args):
        return CaptionCollator(processor, audio=True, prefix=getattr(args, "use_prefix", False),
                               prompt=getattr(args, "prompt", None), prompt_preset=getattr(args, "prompt_preset", None))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _internal_call and self.lora_model is not None:
            merge_lora(self.lora_model)  # the final folder: plain weights
        super().save_model(output_dir, _internal_call)

