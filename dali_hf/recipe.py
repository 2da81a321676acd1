"""The whole DALI recipe, stage after stage, each reading the previous stage's folder (no hard-coded paths).

    1a prefix-tune       <out>/1a-prefix-tune       (image, caption) pairs
    1b align             <out>/1b-align             (audio, image) pairs
    2a pseudo-caption    <out>/2a-pseudo-caption    (audio, image) pairs -> (id, caption)
    2b distill           <out>/2b-distill           the final captioner

Each stage reads its section of the config, named as the stage (`STAGES` in `dali_hf.trainers.stages`).

A stage whose folder holds `stage_complete.json` is skipped; an interrupted training stage resumes from its last
checkpoint, and pseudo-captioning continues where it stopped.
"""

import json
import os
from pathlib import Path

import datasets
from transformers import AutoModel, AutoProcessor
from transformers.trainer_utils import get_last_checkpoint

__all__ = ["check_recipe", "run_recipe", "run_training_stage"]

RENAMED_SECTIONS = {"prefix": "prefix-tune", "pseudo_caption": "pseudo-caption"}  # earlier versions' names
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


def check_recipe(config) -> None:
    """A ValueError saying what to change when `config` is not a recipe `run_recipe` can run: a mapping with
    "model", "output_dir", the "prefix-tune" and "align" sections (each with "data"), sections named as the stages."""
    if not isinstance(config, dict):
        raise ValueError(f"a recipe is a mapping of sections, got {type(config).__name__}")
    renamed = {old: new for old, new in RENAMED_SECTIONS.items() if old in config}
    if renamed:
        raise ValueError("the recipe's sections are named as the stages: rename "
                         + ", ".join(f"{old!r} to {new!r}" for old, new in renamed.items()))
    known = {"model", "output_dir", "prefix-tune", "align", "pseudo-caption", "distill"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown recipe section(s) {unknown}: the sections are {sorted(known)}")
    for section, allowed in SECTION_KEYS.items():
        if not isinstance(config.get(section, {}), dict):
            got = "nothing (leave the section out, or write {})" if config[section] is None else \
                type(config[section]).__name__
            raise ValueError(f"section {section!r} is a mapping of {', '.join(sorted(allowed))}, got {got}")
    missing = [key for key in ("model", "output_dir", "prefix-tune", "align") if key not in config]
    missing += [f"{key}.data" for key in ("prefix-tune", "align") if key in config and "data" not in config[key]]
    if missing:
        raise ValueError(f"the recipe lacks {', '.join(missing)}")
    for section, allowed in SECTION_KEYS.items():
        for key in config.get(section, {}):
            if key not in allowed:
                raise ValueError(f"unknown key {section}.{key}{_nearest(key, allowed)}: the keys of {section!r} are "
                                 f"{', '.join(sorted(allowed))}")
    _check_stage_args(config)
    for section, key in (("prefix-tune", "data"), ("align", "data"), ("align", "eval_data"),
                         ("pseudo-caption", "data")):
        path = config.get(section, {}).get(key)
        if path is not None and not os.path.isdir(path):
            what = "a file" if os.path.isfile(path) else "no such folder"
            raise ValueError(f"{section}.{key} {path}: {what}: data is a folder written by datasets' "
                             "Dataset.save_to_disk (relative paths start from the current folder)")


# what each section may hold besides the stage's TrainingArguments in "args"
SECTION_KEYS = {"prefix-tune": {"data", "args"}, "align": {"data", "eval_data", "args"},
                "pseudo-caption": {"data", "batch_size", "generate"}, "distill": {"args"}}


def _check_stage_args(config) -> None:
    """Each section's "args" are fields of its stage's TrainingArguments subclass; a misspelt one names the nearest."""
    import dataclasses

    from .trainers import AlignmentConfig, DistillationConfig, PrefixTuningConfig

    for section, config_class in (("prefix-tune", PrefixTuningConfig), ("align", AlignmentConfig),
                                  ("distill", DistillationConfig)):
        args = config.get(section, {}).get("args", {})
        if not isinstance(args, dict):
            raise ValueError(f"{section}.args is a mapping of {config_class.__name__} fields, got "
                             f"{type(args).__name__}")
        fields = {field.name for field in dataclasses.fields(config_class) if field.init}
        for name in args:
            if name not in fields:
                raise ValueError(f"{section}.args.{name} is not a {config_class.__name__} field"
                                 f"{_nearest(name, fields)} (the fields are TrainingArguments' and the stage's own)")


def _nearest(name, names) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def run_recipe(config: dict, log=print) -> str:
    """Run the stages of `config` in order; returns the folder of the final captioner.

    `config`: {"model": LlavaAudio folder or Hub id, "output_dir": ..., "prefix-tune": {"data": ...,
    "args": {...}}, "align": {"data": ..., "eval_data": ..., "args": {...}}, "pseudo-caption": {"data": (default:
    the alignment data), "batch_size": 8, "generate": {...}}, "distill": {"args": {...}}}. Data entries are
    `save_to_disk` folders in the column convention.
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
    from .trainers.stages import STAGES

    check_recipe(config)
    out = Path(config["output_dir"])
    folders = {stage.name: str(out / stage.folder) for stage in STAGES}
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
        if name != "pseudo-caption":
            model_path = folder

    stage("prefix-tune", lambda folder: run_training_stage(
        PrefixTuningTrainer, stage_args(PrefixTuningConfig, config["prefix-tune"], folder), model_path,
        load(config["prefix-tune"]["data"]), log=log))
    align = config["align"]
    stage("align", lambda folder: run_training_stage(
        DistributionAlignmentTrainer, stage_args(AlignmentConfig, align, folder), model_path, load(align["data"]),
        eval_dataset=load(align["eval_data"]) if align.get("eval_data") else None, log=log))
    pseudo = config.get("pseudo-caption", {})
    pairs = load(pseudo.get("data", align["data"]))

    def caption(folder):
        model = AutoModel.from_pretrained(model_path)
        processor = AutoProcessor.from_pretrained(model_path)
        generate_pseudo_captions(model, processor, pairs, folder, batch_size=pseudo.get("batch_size", 8),
                                 **pseudo.get("generate", {}))

    stage("pseudo-caption", caption)
    captions = load(os.path.join(folders["pseudo-caption"], "dataset"))
    stage("distill", lambda folder: run_training_stage(
        AudioVisualDistillationTrainer, stage_args(DistillationConfig, config.get("distill", {}), folder),
        model_path, attach_captions(pairs, captions), log=log))
    return folders["distill"]
