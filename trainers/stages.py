"""Shared pieces of the captioning stages (1a prefix tuning, 2 distillation): freeze all but one part, train it
with the language-model loss on captions."""

import torch
from transformers import Trainer

from ..model_cards import record_stage, write_model_card

__all__ = ["CaptionStageTrainer", "ModelCardMixin", "freeze_all_but"]


def freeze_all_but(model, *parts: str) -> None:
    """Only `model.model.<part>` for each of `parts` trains; everything else is frozen (and so left bit-for-bit
    unchanged). Trained parts stored in half precision (a model loaded with `dtype=torch.bfloat16`) are upcast to
    float32: they are the optimiser's master weights, and bf16 cannot hold an update of 1e-4 relative size (lr 1e-4
    would change nothing). Compute stays in half precision under `bf16=True` / `fp16=True` (autocast)."""
    if model is None:
        raise ValueError("the trainer needs a LlavaAudio model")
    model.requires_grad_(False)
    for part in parts:
        module = getattr(model.model, part)
        if isinstance(module, torch.nn.Parameter):
            if module.dtype in HALF_PRECISION:
                module.data = module.data.float()
            module.requires_grad = True
        else:
            if any(p.dtype in HALF_PRECISION for p in module.parameters()):
                module.float()
            module.requires_grad_(True)


HALF_PRECISION = (torch.float16, torch.bfloat16)


class ModelCardMixin:
    """For Trainer subclasses: record the stage's hyper-parameters in the model config (`training_stages`) and write
    the model card (README.md) with every final save."""

    stage_name: str = ""
    card_fields: tuple[str, ...] = ()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        rows = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None
        record_stage(self.model.config, self.stage_name, self.args, rows, self.card_fields)
        super().save_model(output_dir, _internal_call)
        if self.args.should_save and not _internal_call:
            write_model_card(output_dir or self.args.output_dir)


class CaptionStageTrainer(ModelCardMixin, Trainer):
    """A Trainer whose collator builds (prompt, caption) batches from the column convention and that trains only
    `trained_part`; subclasses name the part and the prompt inputs."""

    trained_part: str = ""

    def __init__(self, model=None, args=None, data_collator=None, processing_class=None, **kwargs):
        if data_collator is None:
            if processing_class is None:
                raise ValueError(f"pass processing_class=LlavaAudioProcessor to {type(self).__name__}")
            data_collator = self.build_collator(processing_class, args)
        freeze_all_but(model, self.trained_part)
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class,
                         **kwargs)

    def build_collator(self, processor, args):
        raise NotImplementedError
