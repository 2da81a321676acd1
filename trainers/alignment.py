"""Stage 1b of DALI: align the audio encoder's token distribution to the frozen CLIP image tokens.

For each (audio clip, video frame) pair, A = `model.get_audio_tokens(...)` (trained: the audio tower and
`audio_to_vision`) and I = `model.get_image_tokens(...)` (frozen vision tower, the configured layer, CLS dropped);
the loss compares the two token sets clip by clip (`objectives`) and averages over the batch.
"""

import hashlib
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainingArguments, enable_full_determinism, set_seed
from transformers.utils import logging

from ..modeling import LlavaAudioForConditionalGeneration
from .arguments import check_choices
from .collators import AlignmentCollator, FeatureAugmentation
from .lean import SCORERS_NAME, LlavaAudioAlignmentModel, load_alignment_model
from .objectives import (
    AttentiveMarginals,
    contrastive_loss,
    entropy,
    lambda_schedule,
    mmd_loss,
    start_ot_loss,
)
from .stages import ModelCardMixin, freeze_all_but
from .streaming import AlignmentStream, StreamLoader

__all__ = ["AlignmentConfig", "DistributionAlignmentTrainer", "SCORERS_NAME"]

logger = logging.get_logger(__name__)

TRAINABLE = {"all": ("audio_tower", "audio_to_vision"), "projection": ("audio_to_vision",)}


@dataclass
class AlignmentConfig(TrainingArguments):
    r"""
    Configuration class for [`DistributionAlignmentTrainer`], stage 1b of DALI: align the distribution of the audio
    tokens to that of the frozen image tokens (docs/method.md, section 3).

    This class includes only the parameters that are specific to the alignment stage, and those whose defaults differ
    from [`~transformers.TrainingArguments`]: the optimiser settings of the authors' code, and two that the stage's
    data and DDP need. Batch size and epochs are the user's (the paper: 256 and 20). For the other training arguments, see [`~transformers.TrainingArguments`].
    Using [`~transformers.HfArgumentParser`], this class gives the flags of `dali-hf align`.

    Parameters:
        > Parameters that control the objective

        objective (`str`, *optional*, defaults to `"attentive_ot"`):
            What compares the audio tokens A and the image tokens I of each clip: `"contrastive"` (InfoNCE between
            the clips' mean-pooled tokens, the baseline), `"mmd"` (squared maximum mean discrepancy with a mixture of
            RBF kernels), `"ot"` (optimal transport with uniform token weights) or `"attentive_ot"` (optimal
            transport with token weights given by two cross-attention scorers, the paper's method).
        solver (`str`, *optional*, defaults to `"exact"`):
            How `"ot"` and `"attentive_ot"` solve each clip's transport problem: `"exact"` (POT's network simplex, on
            the CPU, as the authors' code) or `"sinkhorn"` (entropic OT, batched in torch on the tokens' device).
        epsilon (`float` or `None`, *optional*, defaults to `None`):
            Entropic regularisation of `solver="sinkhorn"`, relative to the spread of each clip's costs; `None` means
            0.05. The exact solver ignores it.
        contrastive_temperature (`float`, *optional*, defaults to `0.05`):
            Temperature of the similarities in the `"contrastive"` objective.
        ot_overlap_chunks (`int`, *optional*, defaults to `1`):
            With the exact solver: split each batch into this many chunks, so that the CPU solves one chunk's OT
            problems while the accelerator runs the next chunk's forward pass; `1` turns it off. The loss is the same.

        > Parameters that control attentive OT's scorers

        uniform_epochs (`int`, *optional*, defaults to `1`):
            Epochs at the start that use uniform token weights, with the scorers idle (the paper: 1).
        lambda_values (`list[float]`, *optional*, defaults to `[500.0, 400.0, 300.0, 200.0]`):
            Entropy weight lambda of the scorers' loss OT(A, I; alpha, beta) - lambda (H(alpha) + H(beta)), one value
            per epoch after the uniform ones.
        lambda_final (`float`, *optional*, defaults to `100.0`):
            Lambda of every epoch after those of `lambda_values`.
        scorer_learning_rate (`float`, *optional*, defaults to `1e-4`):
            Learning rate of the scorers' parameter group in the trainer's optimiser, constant (the learning-rate
            schedule drives the audio side only), with betas `adam_beta1` and `adam_beta2` and no weight decay (the
            authors' code: Adam).
        scorer_num_heads (`int`, *optional*, defaults to `8`):
            Attention heads of each scorer; they must divide the width of the image tokens.
        scorer_temperature (`float`, *optional*, defaults to `20.0`):
            Temperature of the softmax that turns a scorer's mean scores into token weights.
        scorer_uniform_mix (`float`, *optional*, defaults to `0.5`):
            Share of uniform weight mixed into the scorers' weights: w becomes (1 - mix) w + mix / tokens.
        attentive_ot_gradient (`str`, *optional*, defaults to `"plan"`):
            What reaches the audio encoder with `"attentive_ot"`: `"plan"` (the OT loss through the transport plan,
            the weights held constant) or `"reference"` (the authors' step: the OT loss through the plan and the
            weights, plus the gradient of the scorers' loss, OT - lambda (H(alpha) + H(beta))).

        > Parameters that control what trains, and on what

        train_audio_parameters (`str`, *optional*, defaults to `"all"`):
            The trained part: `"all"` (the audio tower and `audio_to_vision`) or `"projection"` (`audio_to_vision`
            only).
        augment (`bool`, *optional*, defaults to `False`):
            Augment the training features as the authors' alignment run does: noise U(0, 1) * r *
            `augment_noise_scale` (one r ~ U(0, 1) per clip), then, with `augment_roll`, a random roll along time.
            Evaluation batches are never augmented.
        augment_noise_scale (`float`, *optional*, defaults to `0.1`):
            Largest noise amplitude of `augment`, 0 or more (the authors': 1/10).
        augment_roll (`bool`, *optional*, defaults to `True`):
            With `augment`: roll each clip along time by an integer drawn from [-frames, frames) (the authors': on).

        > Parameters whose defaults differ from TrainingArguments

        learning_rate (`float`, *optional*, defaults to `1e-4`):
            Initial learning rate of the audio side's optimiser (the authors' code: 1e-4).
        adam_beta1 (`float`, *optional*, defaults to `0.95`):
            Beta1 of the audio side's optimiser and of the scorers' (the authors' code: Adam with betas 0.95, 0.999).
        weight_decay (`float`, *optional*, defaults to `5e-7`):
            Weight decay of the audio side's optimiser (the authors' code: 5e-7).
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Keep every dataset column: the collator reads `audio` and `image`, which the model's forward does not
            name.
        ddp_find_unused_parameters (`bool` or `None`, *optional*, defaults to `False`):
            Whether DDP searches for parameters without a gradient; every trained parameter is used at each step, so
            it need not, except attentive OT's scorers in its uniform epochs: the trainer then turns it on.
    """

    # Parameters that control the objective
    objective: Literal["contrastive", "mmd", "ot", "attentive_ot"] = field(
        default="attentive_ot",
        metadata={"help": "What compares the audio tokens A and the image tokens I of each clip: `\"contrastive\"` "
                          "(InfoNCE between the clips' mean-pooled tokens, the baseline), `\"mmd\"` (squared maximum "
                          "mean discrepancy with a mixture of RBF kernels), `\"ot\"` (optimal transport with uniform "
                          "token weights) or `\"attentive_ot\"` (optimal transport with token weights given by two "
                          "cross-attention scorers, the paper's method)."},
    )
    solver: Literal["exact", "sinkhorn"] = field(
        default="exact",
        metadata={"help": "How `\"ot\"` and `\"attentive_ot\"` solve each clip's transport problem: `\"exact\"` "
                          "(POT's network simplex, on the CPU, as the authors' code) or `\"sinkhorn\"` (entropic OT, "
                          "batched in torch on the tokens' device)."},
    )
    epsilon: float | None = field(
        default=None,
        metadata={"help": "Entropic regularisation of `solver=\"sinkhorn\"`, relative to the spread of each clip's "
                          "costs; `None` means 0.05. The exact solver ignores it."},
    )
    contrastive_temperature: float = field(
        default=0.05, metadata={"help": "Temperature of the similarities in the `\"contrastive\"` objective."}
    )
    ot_overlap_chunks: int = field(
        default=1,
        metadata={"help": "With the exact solver: split each batch into this many chunks, so that the CPU solves one "
                          "chunk's OT problems while the accelerator runs the next chunk's forward pass; `1` turns it "
                          "off. The loss is the same."},
    )

    # Parameters that control attentive OT's scorers
    uniform_epochs: int = field(
        default=1,
        metadata={"help": "Epochs at the start that use uniform token weights, with the scorers idle (the paper: 1)."},
    )
    lambda_values: list[float] = field(
        default_factory=lambda: [500.0, 400.0, 300.0, 200.0],
        metadata={"help": "Entropy weight lambda of the scorers' loss OT(A, I; alpha, beta) - lambda (H(alpha) + "
                          "H(beta)), one value per epoch after the uniform ones."},
    )
    lambda_final: float = field(
        default=100.0, metadata={"help": "Lambda of every epoch after those of `lambda_values`."}
    )
    scorer_learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Learning rate of the scorers' parameter group in the trainer's optimiser, constant (the "
                          "learning-rate schedule drives the audio side only), with betas `adam_beta1` and "
                          "`adam_beta2` and no weight decay (the authors' code: Adam)."},
    )
    scorer_num_heads: int = field(
        default=8,
        metadata={"help": "Attention heads of each scorer; they must divide the width of the image tokens."},
    )
    scorer_temperature: float = field(
        default=20.0,
        metadata={"help": "Temperature of the softmax that turns a scorer's mean scores into token weights."},
    )
    scorer_uniform_mix: float = field(
        default=0.5,
        metadata={"help": "Share of uniform weight mixed into the scorers' weights: w becomes (1 - mix) w + mix / "
                          "tokens."},
    )
    attentive_ot_gradient: Literal["plan", "reference"] = field(
        default="plan",
        metadata={"help": "What reaches the audio encoder with `\"attentive_ot\"`: `\"plan\"` (the OT loss through "
                          "the transport plan, the weights held constant) or `\"reference\"` (the authors' step: the "
                          "OT loss through the plan and the weights, plus the gradient of the scorers' loss, OT - "
                          "lambda (H(alpha) + H(beta)))."},
    )

    # Parameters that control what trains, and on what
    train_audio_parameters: Literal["all", "projection"] = field(
        default="all",
        metadata={"help": "The trained part: `\"all\"` (the audio tower and `audio_to_vision`) or `\"projection\"` "
                          "(`audio_to_vision` only)."},
    )
    augment: bool = field(
        default=False,
        metadata={"help": "Augment the training features as the authors' alignment run does: noise U(0, 1) * r * "
                          "`augment_noise_scale` (one r ~ U(0, 1) per clip), then, with `augment_roll`, a random roll "
                          "along time. Evaluation batches are never augmented."},
    )
    augment_noise_scale: float = field(
        default=0.1,
        metadata={"help": "Largest noise amplitude of `augment`, 0 or more (the authors': 1/10)."},
    )
    augment_roll: bool = field(
        default=True,
        metadata={"help": "With `augment`: roll each clip along time by an integer drawn from [-frames, frames) (the "
                          "authors': on)."},
    )

    # Parameters whose defaults differ from TrainingArguments
    learning_rate: float = field(
        default=1e-4,
        metadata={"help": "Initial learning rate of the audio side's optimiser (the authors' code: 1e-4)."},
    )
    adam_beta1: float = field(
        default=0.95,
        metadata={"help": "Beta1 of the audio side's optimiser and of the scorers' (the authors' code: Adam with "
                          "betas 0.95, 0.999)."},
    )
    weight_decay: float = field(
        default=5e-7,
        metadata={"help": "Weight decay of the audio side's optimiser (the authors' code: 5e-7)."},
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep every dataset column: the collator reads `audio` and `image`, which the model's "
                          "forward does not name."},
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Whether DDP searches for parameters without a gradient; every trained parameter is used "
                          "at each step, so it need not, except attentive OT's scorers in its uniform epochs: the "
                          "trainer then turns it on."},
    )

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        if self.augment_noise_scale < 0:
            raise ValueError(f"augment_noise_scale must be 0 or more; got {self.augment_noise_scale}")
        if self.ot_overlap_chunks < 1:
            raise ValueError(f"ot_overlap_chunks must be 1 (off) or more; got {self.ot_overlap_chunks}")


class DistributionAlignmentTrainer(ModelCardMixin, Trainer):
    """Trains the audio side of a LlavaAudio model so its tokens match the image tokens' distribution.

    Objectives: contrastive (baseline), mmd, ot, attentive_ot. For attentive OT the scorers
    ([`AttentiveMarginals`]) are a submodule of the trained model (`model.scorers`, run by its forward pass) with a
    parameter group of their own in the trainer's optimiser (`scorer_learning_rate`, constant; betas `adam_beta1`,
    `adam_beta2`; no weight decay), so the Trainer and its engine (DDP, FSDP2, ZeRO-3) step, clip, reduce, shard,
    checkpoint and restore them with the audio side. They train on OT(A, I; alpha, beta) - lambda (H(alpha) +
    H(beta)). What the encoder gets is `args.attentive_ot_gradient`: "plan" (default), OT(A, I; alpha, beta) with
    the weights as constants (the scorers see the audio tokens detached); "reference", the gradient of the authors'
    step, which backpropagates the scorer loss and then the OT loss into the encoder, both through the weights too.
    One OT solve serves all (gradients: plan for A, dual potentials for the weights). Evaluation and
    best-checkpoint selection use uniform weights. Saved folders hold the scorers beside the captioner
    (`SCORERS_NAME`).

    With `args.augment`, training batches (never evaluation batches) get the reference's feature augmentation
    ([`FeatureAugmentation`]), drawn from a generator seeded, for each batch, from `args.seed`, the process index, the
    global step and the batch's place in it: a resumed run draws what the uninterrupted one draws.

    `model` may be a captioner folder or Hub id: it is then loaded without its language model
    ([`LlavaAudioAlignmentModel`]), and every folder the trainer saves is still a complete captioner. A whole
    captioner passed as `model` trains the same way.
    """

    stage_name = "align"
    card_fields = ("objective", "solver", "epsilon", "lambda_values", "lambda_final", "uniform_epochs",
                   "scorer_learning_rate", "attentive_ot_gradient", "augment", "train_audio_parameters",
                   "adam_beta1", "weight_decay")
    load_model = staticmethod(load_alignment_model)  # how `run_training_stage` loads a folder for this stage

    def __init__(self, model=None, args: AlignmentConfig | None = None, data_collator=None,
                 processing_class=None, scorers: AttentiveMarginals | None = None, **kwargs):
        args = args or AlignmentConfig(output_dir="outputs/alignment")
        if isinstance(model, str | os.PathLike):
            model = load_alignment_model(model)
        elif isinstance(model, LlavaAudioForConditionalGeneration):  # a whole captioner: aligned through its parts
            model.requires_grad_(False)  # frozen as a whole, as alignment leaves it; its trained parts are set below
            model = LlavaAudioAlignmentModel.from_captioner(model)
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass processing_class=LlavaAudioProcessor (or a data_collator)")
            data_collator = AlignmentCollator(processing_class)
        freeze_all_but(model, *TRAINABLE[args.train_audio_parameters])
        if args.objective == "attentive_ot":
            if scorers is None:  # drawn as after the Trainer's seeding, whatever loading the model drew before
                (enable_full_determinism if args.full_determinism else set_seed)(args.seed)
            model.scorers = scorers or AttentiveMarginals(model.config.vision_config.hidden_size, args.scorer_num_heads,
                                                          args.scorer_temperature, args.scorer_uniform_mix)
            model.scorers.requires_grad_(True)
            if args.uniform_epochs > 0 and not args.ddp_find_unused_parameters:
                # the scorers get no gradient in the uniform epochs: DDP must not wait for theirs
                args.ddp_find_unused_parameters = True
        if _is_streaming(kwargs.get("train_dataset")):
            kwargs["train_dataset"] = AlignmentStream(kwargs["train_dataset"], processing_class, seed=args.seed,
                                                      decode_workers=args.dataloader_num_workers or 4)
        super().__init__(model=model, args=args, data_collator=data_collator, processing_class=processing_class,
                         **kwargs)
        self.loss_is_scaled_for_ga = False
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self.augmentation = None
        self._augmented = (-1, 0)  # (global step, batches augmented in it)
        if args.augment:
            self.augmentation = FeatureAugmentation(args.augment_noise_scale, args.augment_roll,
                                                    seed=args.seed + args.process_index)

    # ---- streamed data ---------------------------------------------------------------------------------------

    def get_train_dataloader(self):
        if not isinstance(self.train_dataset, AlignmentStream):
            return super().get_train_dataloader()
        # the stream splits each global batch between processes itself: no accelerate resharding or dispatching
        self.train_dataset.configure(self._train_batch_size, self.args.world_size, self.args.process_index)
        return StreamLoader(self.train_dataset)

    def train(self, resume_from_checkpoint=None, **kwargs):
        if isinstance(self.train_dataset, AlignmentStream) and resume_from_checkpoint \
                and not self.args.ignore_data_skip:
            self._resume_stream(resume_from_checkpoint)
        if self.scorers is not None and resume_from_checkpoint and not (self.is_deepspeed_enabled or
                                                                        self.is_fsdp_enabled):
            self._resume_scorers(resume_from_checkpoint)  # FSDP and DeepSpeed restore them with the model
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    @property
    def scorers(self) -> AttentiveMarginals | None:
        """Attentive OT's scorers (a submodule of the trained model), or None for the other objectives."""
        return getattr(self.accelerator.unwrap_model(self.model), "scorers", None)

    def _resume_scorers(self, checkpoint) -> None:
        """The scorers' weights of a checkpoint (the Trainer's loader reads the captioner's, which holds none)."""
        from transformers.trainer_utils import get_last_checkpoint

        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        scorer_file = os.path.join(checkpoint or "", SCORERS_NAME)
        if os.path.isfile(scorer_file):
            self.scorers.load_state_dict(load_file(scorer_file))  # copied into the parameters, on their device
        elif checkpoint and os.path.isdir(checkpoint):
            logger.warning(f"{checkpoint} holds no {SCORERS_NAME}: the scorers start afresh")

    # ---- the scorers' parameter group -------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        """The Trainer's optimiser, plus a parameter group for the scorers with the authors' settings for them."""
        opt_model = self.model if model is None else model
        scorers = getattr(self.accelerator.unwrap_model(opt_model), "scorers", None)
        if self.optimizer is not None or scorers is None:
            return super().create_optimizer(model)
        trained = [p for p in scorers.parameters() if p.requires_grad]
        scorers.requires_grad_(False)  # left out of the Trainer's groups (and of their weight decay)
        try:
            optimizer = super().create_optimizer(model)
        finally:
            for param in trained:
                param.requires_grad_(True)
        optimizer.add_param_group({"params": trained, "lr": self.args.scorer_learning_rate,
                                   "betas": (self.args.adam_beta1, self.args.adam_beta2), "weight_decay": 0.0,
                                   SCORER_GROUP: True})
        return optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's schedule for the audio side; the scorers keep their learning rate (the authors' code).

        Under FSDP, every trainable parameter also gets its optimiser state now, equal to the one Adam creates at
        its first step (`initialize_optimizer_state`). The Trainer calls this after `accelerator.prepare` (the
        optimiser holds the sharded parameters) and before it loads a checkpoint. Attentive OT's scorers take no
        step in the uniform-weight epochs, so a checkpoint written then has no state for them; FSDP's sharded
        optimiser load asks a fresh optimiser for its full state (torch steps it once with zero gradients) and
        then finds the scorers' keys missing from such a checkpoint. With every state there from the start, each
        checkpoint holds all of them and the fresh optimiser asks for exactly those. Only FSDP needs it: DDP and
        DeepSpeed load what the checkpoint holds (and DeepSpeed's optimiser is its own)."""
        if self.is_fsdp_enabled and not self.is_deepspeed_enabled:
            initialize_optimizer_state(self.optimizer if optimizer is None else optimizer)
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        groups = scheduler.optimizer.param_groups
        scorer_groups = [i for i, group in enumerate(groups) if group.get(SCORER_GROUP)]
        if not scorer_groups:
            return scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            for i in scorer_groups:
                scheduler.lr_lambdas[i] = _constant
                groups[i]["lr"] = groups[i]["initial_lr"]
        else:
            logger.warning(f"the {type(scheduler).__name__} schedule also drives the scorers' learning rate")
        return scheduler

    def _resume_stream(self, checkpoint) -> None:
        """Tell the stream where the checkpoint stopped, so the Trainer's fast-forward reads and decodes nothing."""
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import get_last_checkpoint

        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
        state_file = os.path.join(checkpoint or "", "trainer_state.json")
        if not os.path.isfile(state_file):
            return  # the Trainer reports the missing checkpoint
        step = TrainerState.load_from_json(state_file).global_step
        stream = self.train_dataset.configure(self._train_batch_size, self.args.world_size, self.args.process_index)
        accumulation = self.args.gradient_accumulation_steps
        updates_per_epoch = max(len(stream) // accumulation, 1) if stream.num_rows is not None else self.args.max_steps
        epoch, updates_done = divmod(step, updates_per_epoch)
        stream.resume(epoch, updates_done * accumulation)

    # ---- the loss --------------------------------------------------------------------------------------------

    def current_lambda(self) -> float | None:
        """The entropy weight of the current epoch (None: uniform weights, scorers idle)."""
        epoch = int(self.state.epoch or 0) + 1
        return lambda_schedule(epoch, tuple(self.args.lambda_values), self.args.lambda_final,
                               self.args.uniform_epochs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        train = model.training
        lam = self.current_lambda() if (self.args.objective == "attentive_ot" and train) else None
        if train and self.augmentation is not None:
            self.augmentation.generator.manual_seed(self._augmentation_seed())
            inputs = self.augmentation.apply(inputs)
        # every chunk's forward pass is issued before any OT result is waited for: the CPU solves one chunk while
        # the device computes the next
        started = [self._start_objective(model, chunk, lam) for chunk in self._chunks(inputs)]
        terms = defaultdict(list)
        for _, _, finish in started:
            for name, value in finish().items():
                terms[name].append(value)
        terms = {name: torch.cat(values) for name, values in terms.items()}
        loss = terms.pop("loss").mean()
        metrics = self._metrics["train" if train else "eval"]
        for name, values in terms.items():
            metrics[name].append(values.mean().item())
        if lam is not None:
            metrics["lambda"].append(lam)
        if not return_outputs:
            return loss
        return loss, {"audio_tokens": torch.cat([s[0] for s in started]),
                      "image_tokens": torch.cat([s[1] for s in started])}

    def _augmentation_seed(self) -> int:
        """The seed of this batch's augmentation: a function of the run's seed, the process, the global step and the
        batch's place in it (gradient accumulation), so that nothing needs saving for a resumed run to draw the same."""
        step = self.state.global_step
        last_step, count = self._augmented
        count = count + 1 if last_step == step else 0
        self._augmented = (step, count)
        key = f"{self.args.seed}/{self.args.process_index}/{step}/{count}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")

    def _chunks(self, inputs):
        chunks = self.args.ot_overlap_chunks
        if chunks <= 1 or self.args.objective not in ("ot", "attentive_ot") or self.args.solver != "exact":
            return [inputs]
        size = -(-len(inputs["input_features"]) // chunks)
        return [{key: value[start:start + size] for key, value in inputs.items()}
                for start in range(0, len(inputs["input_features"]), size)]

    def _tokens(self, model, inputs, token_weights=None):
        # One forward pass of the (wrapped) model gives both token sets (and the scorers' weights), so FSDP / ZeRO-3
        # gather the frozen vision tower's and the scorers' weights as for any forward; nothing on the image side
        # requires grad, so no graph is kept there.
        cached = inputs.get("image_tokens")  # the frozen tower's tokens for a frame never change
        outputs = model(input_features=inputs["input_features"], input_features_mask=inputs.get("input_features_mask"),
                        pixel_values=None if cached is not None else inputs["pixel_values"], image_tokens=cached,
                        token_weights=token_weights)
        return outputs, outputs.audio_tokens, outputs.image_tokens.detach().to(outputs.audio_tokens.dtype)

    def _start_objective(self, model, inputs, lam):
        """Tokens of one chunk and a function giving its per-clip terms: "loss" (what the gradient flows from) and
        the terms to log. OT solves start here and are waited for in that function."""
        args = self.args
        outputs, audio, image = self._tokens(model, inputs,
                                             token_weights=None if lam is None else args.attentive_ot_gradient)
        if args.objective == "contrastive":
            losses = contrastive_loss(audio, image, args.contrastive_temperature)
            return audio, image, lambda: {"loss": losses, "contrastive": losses.detach()}
        if args.objective == "mmd":
            losses = mmd_loss(audio, image)
            return audio, image, lambda: {"loss": losses, "mmd": losses.detach()}
        if lam is None:
            pending = start_ot_loss(audio, image, solver=args.solver, epsilon=args.epsilon)

            def finish():
                losses = pending.result()
                return {"loss": losses, "ot": losses.detach()}

            return audio, image, finish
        alpha, beta = outputs.audio_weights, outputs.image_weights  # what the scorers' entropy is computed on
        if args.attentive_ot_gradient == "reference":
            # The authors' step backpropagates OT - lambda H (for the scorers), then OT, into the same encoder
            # gradients: the encoder gets OT's gradient twice, through plan and weights, the scorers once. Here one
            # solve does it: the tokens count twice in the cost, and the transport weights reach them twice (the
            # model's forward, values unchanged).
            pending = start_ot_loss(_plus_gradient(audio, audio), image, outputs.audio_transport_weights,
                                    outputs.image_transport_weights, solver=args.solver, epsilon=args.epsilon)
        else:
            pending = start_ot_loss(audio, image, alpha, beta, solver=args.solver, epsilon=args.epsilon)

        def finish_attentive():
            ot = pending.result()
            h_audio, h_image = entropy(alpha), entropy(beta)
            scorer_only = -lam * (h_audio + h_image)
            # value = OT; the entropy bonus only adds its gradient
            return {"loss": ot + (scorer_only - scorer_only.detach()), "ot": ot.detach(),
                    "entropy_audio": h_audio.detach(), "entropy_image": h_image.detach()}

        return audio, image, finish_attentive

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    @torch.no_grad()
    def plot_token_distributions(self, path, dataset=None, num_clips: int = 32, batch_size: int = 8) -> None:
        """Save the token-distribution figure (2-D PCA of audio vs image tokens, per-clip means and per token) for
        the first `num_clips` pairs of `dataset` (default: the eval set, else the training set). Under DeepSpeed
        ZeRO-3 and FSDP, whose forward pass gathers the weights from every process, call it on every process; only
        the main process writes the figure."""
        from .figures import plot_token_distributions

        dataset = dataset if dataset is not None else (self.eval_dataset or self.train_dataset)
        if isinstance(dataset, AlignmentStream):
            dataset = dataset.source
        rows = (list(itertools.islice(iter(dataset), num_clips)) if isinstance(dataset, torch.utils.data.IterableDataset)
                else [dataset[i] for i in range(min(num_clips, len(dataset)))])
        model = self.accelerator.unwrap_model(self.model).eval()
        audio, image = [], []
        for start in range(0, len(rows), batch_size):
            batch = {k: v.to(model.device) for k, v in self.data_collator(rows[start:start + batch_size]).items()}
            cached = batch.get("image_tokens")
            outputs = model(pixel_values=batch.get("pixel_values"), input_features=batch["input_features"],
                            input_features_mask=batch.get("input_features_mask"))
            audio.append(outputs.audio_tokens)
            image.append(outputs.image_tokens if cached is None else cached.to(outputs.audio_tokens.dtype))
        if self.is_world_process_zero():
            plot_token_distributions(torch.cat(audio), torch.cat(image), path,
                                     title=f"{self.args.objective}, step {self.state.global_step}")

    # ---- logging -----------------------------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        names = sorted(name for name, values in self._metrics[mode].items() if values)
        if names:  # each process saw its own clips: log the mean over processes, as the Trainer does for the loss
            means = torch.tensor([sum(self._metrics[mode][name]) / len(self._metrics[mode][name]) for name in names],
                                 dtype=torch.float64, device=self.args.device)
            if self.accelerator.num_processes > 1:
                means = self.accelerator.reduce(means, reduction="mean")
            logs.update({prefix + name: value for name, value in zip(names, means.tolist(), strict=True)})
        self._metrics[mode].clear()
        super().log(logs, start_time)


SCORER_GROUP = "attentive_ot_scorers"  # marks the scorers' parameter group in the optimiser


def _constant(step: int) -> float:
    return 1.0


def initialize_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Give each trainable parameter without optimiser state the state Adam (or AdamW) creates at its first step:
    step 0 and zero moments, so that training goes on exactly as with the lazily created state.

    One step with zero gradients, learning rate 0 and weight decay 0 (Adam's L2 decay would put the parameter in the
    first moment) creates the state; the other parameters get no gradient, so Adam leaves them (and their state)
    alone. Then each new state's step goes back to 0. The parameters do not change. Gradients are left unset."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper: step the torch optimiser itself
    new = [param for group in optimizer.param_groups for param in group["params"]
           if param.requires_grad and not optimizer.state.get(param)]
    if not new:
        return
    saved = [(group, {key: group[key] for key in ("lr", "weight_decay") if key in group})
             for group in optimizer.param_groups]
    grads = {param: param.grad for group in optimizer.param_groups for param in group["params"]}
    try:
        for group, values in saved:
            for key, value in values.items():
                group[key] = torch.zeros_like(value) if isinstance(value, torch.Tensor) else 0.0
        for param in grads:
            param.grad = None
        for param in new:
            param.grad = torch.zeros_like(param)
        optimizer.step()
    finally:
        for group, values in saved:
            group.update(values)
        for param, grad in grads.items():
            param.grad = grad
    for param in new:
        state = optimizer.state[param]
        if isinstance(state.get("step"), torch.Tensor):
            state["step"].zero_()
        elif "step" in state:
            state["step"] = 0


def _plus_gradient(value: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """`value`, whose backward also sends the incoming gradient through `extra` (a tensor of equal value)."""
    return value + (extra - extra.detach())


def _is_streaming(dataset) -> bool:
    import datasets

    return isinstance(dataset, datasets.IterableDataset)
