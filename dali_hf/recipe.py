"""The whole DALI recipe, stage after stage, each reading the previous stage's folder (no hard-coded paths).

    1a prefix-tune       <out>/1a-prefix-tune       (image, caption) pairs
    1b align             <out>/1b-align             (audio, image) pairs
    2a pseudo-caption    <out>/2a-pseudo-caption    (audio, image) pairs -> (id, caption)
    2b distill           <out>/2b-distill           the final captioner

Each stage reads its section of the config, named as the stage (`STAGES` in `dali_hf.trainers.stages`); `RECIPE`
lists them as data (`RecipeStep`: the stage, the function that writes its folder, whether the next stage starts
from that folder).

A stage whose folder holds `stage_complete.json` is skipped; an interrupted training stage resumes from its last
checkpoint (or from the `resume_from_checkpoint` of its "args"), and pseudo-captioning continues where it stopped.
"""

import json
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import AutoModel, AutoProcessor
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import get_last_checkpoint

__all__ = ["check_recipe", "checkpoint_to_resume", "run_recipe", "run_training_stage"]

RENAMED_SECTIONS = {"prefix": "prefix-tune", "pseudo_caption": "pseudo-caption"}  # earlier versions' names
DONE = "stage_complete.json"


def checkpoint_to_resume(args) -> str | None:
    """The checkpoint a stage resumes from: `args.resume_from_checkpoint` when set (a checkpoint folder of the
    Trainer, or "true" for the last one in `args.output_dir`), else the last checkpoint in `args.output_dir`, else
    None. A ValueError names a path that is not a checkpoint, before anything loads."""
    asked = args.resume_from_checkpoint
    in_output_dir = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if asked is None:
        return in_output_dir
    if str(asked).lower() == "true":
        if in_output_dir is None:
            raise ValueError(f"--resume_from_checkpoint true: {args.output_dir} holds no checkpoint-N folder to "
                             "resume from; pass the checkpoint's path, or leave the flag out to start afresh")
        return in_output_dir
    if not os.path.isdir(asked):
        raise ValueError(f"--resume_from_checkpoint {asked}: no such folder; pass a checkpoint-N folder that a run "
                         "wrote, or leave the flag out to resume from the last checkpoint in --output_dir")
    if not os.path.isfile(os.path.join(asked, TRAINER_STATE_NAME)):
        raise ValueError(f"--resume_from_checkpoint {asked} is not a Trainer checkpoint (it has no "
                         f"{TRAINER_STATE_NAME}); pass a checkpoint-N folder that a run wrote, not a model folder")
    return str(asked)


def run_training_stage(trainer_class, args, model_path: str, train_dataset, eval_dataset=None, log=print):
    """Load the model and processor at `model_path`, train with `trainer_class` and `args` (the stage's
    TrainingArguments), save model + processor (and, for alignment, the token-distribution figure) to
    `args.output_dir`. It resumes from `args.resume_from_checkpoint` when set, else from the last checkpoint in
    `args.output_dir` if there is one (`checkpoint_to_resume`)."""
    output_dir = args.output_dir
    last = checkpoint_to_resume(args)
    _import_model_code(model_path)
    # alignment loads only what it runs (no language model); the other stages load the whole captioner
    model = getattr(trainer_class, "load_model", AutoModel.from_pretrained)(model_path)
    processor = AutoProcessor.from_pretrained(model_path)
    trainer = trainer_class(model=model, args=args, processing_class=processor, train_dataset=train_dataset,
                            eval_dataset=eval_dataset)
    if last and trainer.is_world_process_zero():  # one line per run, not per process
        log(f"resuming from {last}")
    trainer.train(resume_from_checkpoint=last)
    trainer.save_model()
    main = trainer.is_world_process_zero()
    if main:
        processor.save_pretrained(output_dir)
    # under FSDP / ZeRO-3 every process holds a shard of the weights, so every process runs the figure's forward
    # passes (gathering them); the main process alone writes it
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled
    if hasattr(trainer, "plot_token_distributions") and (main or sharded):
        trainer.plot_token_distributions(os.path.join(output_dir, "token_distributions.png"))
    trainer.accelerator.wait_for_everyone()  # the folder is whole before any process reads it (the next stage)
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
    known = {"model", "output_dir", *(step.stage for step in RECIPE)}
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
    check_recipe(config)
    model_path = config["model"]
    for step in RECIPE:
        folder = _stage_folder(config, step.stage)
        if (Path(folder) / DONE).exists():
            log(f"[{step.stage}] already done, skipped")
        else:
            log(f"[{step.stage}] from {model_path}")
            step.run(config, model_path, folder, log)
            Path(folder, DONE).write_text(json.dumps({"input_model": model_path}))
        if step.gives_model:
            model_path = folder
    return _stage_folder(config, RECIPE[-1].stage)


@dataclass(frozen=True)
class RecipeStep:
    """A stage of the recipe: `run(config, model_path, folder, log)` writes the stage's `folder` from the captioner
    at `model_path`; the next stage starts from that folder when the stage `gives_model` (pseudo-captioning writes
    captions: distillation starts from the aligned captioner)."""

    stage: str  # a name of `STAGES`
    run: Callable[[dict, str, str, Callable], None]
    gives_model: bool = True


def _stage_folder(config: dict, name: str) -> str:
    from .trainers.stages import stage_named

    return str(Path(config["output_dir"]) / stage_named(name).folder)


def _stage_args(config_class, section: dict, folder: str):
    return config_class(**{"output_dir": folder, "report_to": [], **section.get("args", {})})


def _prefix_tune(config: dict, model_path: str, folder: str, log) -> None:
    from .trainers import PrefixTuningConfig, PrefixTuningTrainer

    section = config["prefix-tune"]
    run_training_stage(PrefixTuningTrainer, _stage_args(PrefixTuningConfig, section, folder), model_path,
                       datasets.load_from_disk(section["data"]), log=log)


def _align(config: dict, model_path: str, folder: str, log) -> None:
    from .trainers import AlignmentConfig, DistributionAlignmentTrainer

    section = config["align"]
    load = datasets.load_from_disk
    run_training_stage(DistributionAlignmentTrainer, _stage_args(AlignmentConfig, section, folder), model_path,
                       load(section["data"]),
                       eval_dataset=load(section["eval_data"]) if section.get("eval_data") else None, log=log)


def _caption_pairs(config: dict):
    """The (audio, image) pairs that are pseudo-captioned, then distilled on: "pseudo-caption"'s data, else
    "align"'s."""
    return datasets.load_from_disk(config.get("pseudo-caption", {}).get("data", config["align"]["data"]))


def _pseudo_caption(config: dict, model_path: str, folder: str, log) -> None:
    section = config.get("pseudo-caption", {})
    pairs = _caption_pairs(config)
    settings = dict(batch_size=section.get("batch_size", 8), **section.get("generate", {}))
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        _caption(model_path, pairs, folder, settings)
        return
    # under `accelerate launch` the main process captions alone (one file of captions) while the others wait,
    # in a fresh Python process: the engine's state (ZeRO-3's partitioning of every model loaded and its patched
    # module classes, the process group) stays out of one-process generation
    if torch.distributed.get_rank() == 0:
        child = multiprocessing.get_context("spawn").Process(target=_caption,
                                                             args=(model_path, pairs, folder, settings))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"pseudo-captioning into {folder} failed (exit status {child.exitcode}); rerun "
                               "the same command to resume it")
    torch.distributed.barrier()


def _distill(config: dict, model_path: str, folder: str, log) -> None:
    from .trainers import AudioVisualDistillationTrainer, DistillationConfig, attach_captions

    captions = datasets.load_from_disk(os.path.join(_stage_folder(config, "pseudo-caption"), "dataset"))
    run_training_stage(AudioVisualDistillationTrainer,
                       _stage_args(DistillationConfig, config.get("distill", {}), folder), model_path,
                       attach_captions(_caption_pairs(config), captions), log=log)


# the stages in the order they run, each starting from the model of the last stage that gives one
RECIPE = (
    RecipeStep("prefix-tune", _prefix_tune),
    RecipeStep("align", _align),
    RecipeStep("pseudo-caption", _pseudo_caption, gives_model=False),
    RecipeStep("distill", _distill),
)


def _import_model_code(model_path: str) -> None:
    """Import the modules of the captioner's towers now, before any model loads. Under ZeRO-3 a model loads inside
    `deepspeed.zero.Init`, which patches the `__init__` of the module classes and restores, on leaving, the one it
    first saw: a class whose module is first imported there (Transformers imports them lazily) loses the `__init__`
    that the `kernels` decorators give it (Llama's attention), and a second captioner loaded by the same process (the
    2b stage of `dali-hf train`) then fails in its forward pass."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(model_path)
    for name in getattr(config, "sub_configs", {}):
        sub_config = getattr(config, name, None)
        if sub_config is not None and type(sub_config) in MODEL_MAPPING:
            MODEL_MAPPING[type(sub_config)]  # the lazy mapping imports the class's module


# what `accelerate launch` (torchrun) tells its processes: the captioning child must not read it, or it would wait
# for the other processes of a group it is not part of
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                     "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _caption(model_path: str, pairs, folder: str, settings: dict) -> None:
    from .modeling.auto_classes import register
    from .trainers import generate_pseudo_captions

    for name in list(os.environ):
        if name in _LAUNCH_VARIABLES or name.startswith(("ACCELERATE_", "TORCHELASTIC_")):
            del os.environ[name]  # one process, whatever launched its parent
    register()  # a fresh process of the `dali-hf` command, which registers nothing at import

    model = AutoModel.from_pretrained(model_path)
    generate_pseudo_captions(model, AutoProcessor.from_pretrained(model_path), pairs, folder, **settings)
