"""The whole DALI recipe, stage after stage, each reading the previous stage's folder (no hard-coded paths).

    1a prefix tuning        <out>/1a-prefix          (image, caption) pairs
    1b alignment            <out>/1b-align           (audio, image) pairs
    2a pseudo-captions      <out>/2a-pseudo-captions (audio, image) pairs -> (id, caption)
    2b distillation         <out>/2b-distill         the final captioner

A stage whose folder holds `stage_complete.json` is skipped; an interrupted training stage resumes from its last
checkpoint, and pseudo-captioning continues where it stopped.
"""

import json
import os
from pathlib import Path

import datasets
from transformers import AutoModel, AutoProcessor
from transformers.trainer_utils import get_last_checkpoint

__all__ = ["STAGES", "run_recipe", "run_training_stage"]

STAGES = ("1a-prefix", "1b-align", "2a-pseudo-captions", "2b-distill")
DONE = "stage_complete.json"


def run_training_stage(trainer_class, args, model_path: str, train_dataset, eval_dataset=None, log=print):
    """Load the model and processor at `model_path`, train with `trainer_class` and `args` (the stage's
    TrainingArguments), save model + processor (and, for alignment, the token-distribution figure) to
    `args.output_dir`, resuming from its last checkpoint if there is one."""
    output_dir = args.output_dir
    # alignment loads only what it runs (no language model); the other stages load the whole captioner
    model = getattr(trainer_class, "load_model", AutoModel.from_pretrained)(model_path)
    processor = AutoProcessor.from_pretrained(model_path)
    trainer = trainer_class(model=model, args=args, processing_class=processor, train_dataset=train_dataset,
                            eval_dataset=eval_dataset)
    last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if last:
        log(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model()
    if trainer.is_world_process_zero():
        processor.save_pretrained(output_dir)
        if hasattr(trainer, "plot_token_distributions"):
            trainer.plot_token_distributions(os.path.join(output_dir, "token_distributions.png"))
    return trainer


def run_recipe(config: dict, log=print) -> str:
    """Run the stages of `config` in order; returns the folder of the final captioner.

    `config`: {"model": LlavaAudio folder or Hub id, "output_dir": ..., "prefix": {"data": ..., "args": {...}},
    "align": {"data": ..., "eval_data": ..., "args": {...}}, "pseudo_caption": {"data": (default: the alignment
    data), "batch_size": 8, "generate": {...}}, "distill": {"args": {...}}}. Data entries are `save_to_disk`
    folders in the column convention.
    """
    from .trainers import (
        AlignmentConfig,
        AudioVisualDistillationTrainer,
        DistillationConfig,
        DistributionAlignmentTrainer,
        PrefixTuningConfig,
        PrefixTuningTrainer,
        attach_captions,
        generate_pseudo_captions,
    )

    out = Path(config["output_dir"])
    folders = {stage: str(out / stage) for stage in STAGES}
    model_path = config["model"]
    load = datasets.load_from_disk

    def stage_args(config_class, section: dict, folder: str):
        return config_class(**{"output_dir": folder, "report_to": [], **section.get("args", {})})

    def stage(name, run):
        nonlocal model_path
        folder = folders[name]
        if (Path(folder) / DONE).exists():
            log(f"[{name}] already done, skipped")
        else:
            log(f"[{name}] from {model_path}")
            run(folder)
            Path(folder, DONE).write_text(json.dumps({"input_model": model_path}))
        if name != "2a-pseudo-captions":
            model_path = folder

    stage("1a-prefix", lambda folder: run_training_stage(
        PrefixTuningTrainer, stage_args(PrefixTuningConfig, config["prefix"], folder), model_path,
        load(config["prefix"]["data"]), log=log))
    align = config["align"]
    stage("1b-align", lambda folder: run_training_stage(
        DistributionAlignmentTrainer, stage_args(AlignmentConfig, align, folder), model_path, load(align["data"]),
        eval_dataset=load(align["eval_data"]) if align.get("eval_data") else None, log=log))
    pseudo = config.get("pseudo_caption", {})
    pairs = load(pseudo.get("data", align["data"]))

    def caption(folder):
        model = AutoModel.from_pretrained(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
        generate_pseudo_captions(model, processor, pairs, folder, batch_size=pseudo.get("batch_size", 8),
                                 **pseudo.get("generate", {}))

    stage("2a-pseudo-captions", caption)
    captions = load(os.path.join(folders["2a-pseudo-captions"], "dataset"))
    stage("2b-distill", lambda folder: run_training_stage(
        AudioVisualDistillationTrainer, stage_args(DistillationConfig, config.get("distill", {}), folder),
        model_path, attach_captions(pairs, captions), log=log))
    return folders["2b-distill"]
