"""DALI's stages and what their trainers share.

`STAGES` (defined in `dali_hf.modeling.vocabulary`, where the command line reads it without torch) is the one
vocabulary of stages: each has a step ("1a") and a name ("prefix-tune"), which are the `dali-hf` subcommand, the
recipe's config section, the folder the recipe writes (`1a-prefix-tune`), the stage recorded in a saved config and
shown on its model card, and the name used in the docs and the memory tables:

    1a prefix-tune      learn the prefix on (image, sound caption) pairs
    1b align            align the audio encoder's tokens to the image tokens
    2a pseudo-caption   caption (audio, image) pairs from image + audio + prefix
    2b distill          fine-tune the audio projector on the pseudo-captions

The captioning stages (1a, 2b) freeze all but one part and train it with the language-model loss on captions.
"""

import torch
from transformers import Trainer

from ..model_cards import record_stage, write_model_card
from ..modeling.vocabulary import STAGES, Stage, stage_named

__all__ = ["STAGES", "CaptionStageTrainer", "ModelCardMixin", "Stage", "freeze_all_but", "stage_named"]


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

    stage_name: str = ""  # a name of `STAGES`
    card_fields: tuple[str, ...] = ()

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        rows = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else None
        stage = stage_named(self.stage_name)
        record_stage(self.model.config, stage.name, self.args, rows, self.card_fields, step=stage.step,
                     optimizer_steps=self.state.max_steps or None)
        if getattr(self, "is_fsdp_enabled", False) and not _internal_call:
            self._save_gathered(output_dir)
        else:
            super().save_model(output_dir, _internal_call)
        if self.args.should_save and not _internal_call:
            write_model_card(output_dir or self.args.output_dir)
        if not _internal_call:
            # the other processes wait until the main one has written the folder: a process that exits first tears
            # its process group down under the writer (gloo aborts it), and the launcher then kills the writer
            self.accelerator.wait_for_everyone()

    def _save_gathered(self, output_dir: str | None) -> None:
        """The final folder under FSDP: the whole model, gathered by every process, written by the main one as a
        plain save writes it (with the shipped `SHARDED_STATE_DICT` the Trainer itself writes only sharded
        checkpoints, no model folder)."""
        from torch.distributed.fsdp import FSDPModule

        state_dict = self.accelerator.get_state_dict(self.model)  # a collective: every process calls it
        sharded_class = type(self.model)
        if issubclass(sharded_class, FSDPModule):
            # `fully_shard` gives the model a class of torch's module; the saved remote code is taken from the
            # class's module, so the save runs under the model's own class
            self.model.__class__ = next(c for c in sharded_class.__mro__ if not issubclass(c, FSDPModule))
        try:
            self._save(output_dir, state_dict=state_dict)
        finally:
            self.model.__class__ = sharded_class


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
