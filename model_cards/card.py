"""Model cards of DALI checkpoints: `record_stage` notes a training stage's hyper-parameters in the model config,
`render_model_card` / `write_model_card` render `dali_model_card.md` (a huggingface_hub `ModelCard` template)
from what a folder's config records (base LLaVA, audio encoder, the stages that trained it) and optional evaluation
results (`model-index` metadata, plus `.eval_results/*.yaml` entries for benchmarks with a Hub dataset id)."""

import json
import os
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ["TEMPLATE", "eval_result_files", "eval_results_of", "record_stage", "render_model_card", "write_model_card"]

TEMPLATE = Path(__file__).with_name("dali_model_card.md")


def record_stage(config, stage: str, args, train_rows: int | None = None, fields: tuple[str, ...] = (),
                 step: str | None = None, optimizer_steps: int | None = None) -> None:
    """Add (or replace) this stage's record in `config.training_stages`: the hyper-parameters a model card shows.
    `stage` is the stage's name ("align") and `step` its place in the recipe ("1b"). `optimizer_steps`: the steps
    the Trainer's learning-rate schedule was made for; with it the record holds the warm-up steps the schedule used
    (`warmup_steps` below 1 is a share of them)."""
    record = {"stage": stage, "step": step, "train_rows": train_rows, "world_size": args.world_size,
              "per_device_train_batch_size": args.per_device_train_batch_size,
              "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
              "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps, "seed": args.seed,
              **{name: _plain(getattr(args, name)) for name in fields}}
    if optimizer_steps:
        record |= {"optimizer_steps": optimizer_steps, "warmup_steps": args.get_warmup_steps(optimizer_steps)}
    config.training_stages = [s for s in (config.training_stages or []) if s.get("stage") != stage] + [record]


def render_model_card(folder, repo_id: str | None = None, eval_results: dict | None = None,
                      license: str = "apache-2.0", datasets: list[str] | None = None) -> ModelCard:
    """The model card of the LlavaAudio folder `folder` (nothing is written).

    `eval_results`: {dataset name: {"scores": {metric: value in [0, 1]}, "split": ..., "dataset_id": Hub id or
    None}} (e.g. from `dali-hf evaluate`'s scores.json); scores go into `model-index` (in percent).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    repo_id = repo_id or folder.name
    stages = config.get("training_stages") or []
    base_model = config.get("base_model")
    alignment = next((s for s in stages if s["stage"] in ("align", "alignment")), None)  # "alignment": saved by earlier versions
    objective = alignment["objective"] if alignment else "none recorded"
    results = [result for dataset, entry in (eval_results or {}).items() for result in eval_results_of(dataset, entry)]
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="audio-text-to-text", license=license, base_model=base_model,
        tags=["audio-captioning", "dali", "llava", "zero-shot", "custom_code"], datasets=datasets,
        model_name=repo_id, eval_results=results or None,
    )
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_title=repo_id.split("/")[-1], repo_id=repo_id,
        base_model=base_model, audio_encoder=config.get("audio_config", {}).get("model_type", "unknown"),
        objective=objective, stages_summary=", ".join(_stage_title(s) for s in stages)
        or "none recorded (built from parts or converted)",
        training_section=_training_section(stages), evaluation_section=_evaluation_section(eval_results),
    )


def eval_results_of(dataset: str, entry: dict) -> list[EvalResult]:
    """The `model-index` results (scores in percent) of one evaluated dataset, as a model card and `dali-hf evaluate`'s
    `model_index.json` hold them. `entry` is the evaluation record: {"scores": {metric: value in [0, 1]}, "split":
    (default "test"), "dataset_id": Hub id or None (default: `dataset` in lower case)}."""
    return [EvalResult(task_type="audio-captioning", task_name="Audio captioning",
                       dataset_type=entry.get("dataset_id") or dataset.lower(), dataset_name=dataset,
                       dataset_split=entry.get("split", "test"), metric_type=metric, metric_name=metric.upper(),
                       metric_value=round(100 * value, 2))
            for metric, value in entry["scores"].items()]


def write_model_card(folder, repo_id: str | None = None, eval_results: dict | None = None, **card_kwargs) -> ModelCard:
    """Render the model card into `folder/README.md`, and `.eval_results/<dataset>.yaml` (the Hub's newer format)
    for evaluated datasets that have a Hub id; returns the card."""
    card = render_model_card(folder, repo_id, eval_results, **card_kwargs)
    card.save(Path(folder) / "README.md")
    for name, content in eval_result_files(eval_results).items():
        os.makedirs(Path(folder) / ".eval_results", exist_ok=True)
        (Path(folder) / name).write_text(content)
    return card


def eval_result_files(eval_results: dict | None) -> dict[str, str]:
    """{".eval_results/<dataset>.yaml": yaml} for evaluated datasets with a Hub id (the Hub's newer eval-results
    format), where the installed huggingface_hub supports it."""
    try:
        from huggingface_hub import EvalResultEntry
        from huggingface_hub._eval_results import eval_result_entries_to_yaml
    except ImportError:  # an older huggingface_hub: model-index only
        return {}
    import yaml

    files = {}
    for dataset, entry in (eval_results or {}).items():
        if entry.get("dataset_id"):
            entries = [EvalResultEntry(dataset_id=entry["dataset_id"], task_id=metric, value=round(100 * value, 2))
                       for metric, value in entry["scores"].items()]
            files[f".eval_results/{dataset.lower()}.yaml"] = yaml.safe_dump(eval_result_entries_to_yaml(entries),
                                                                           sort_keys=False)
    return files


def _training_section(stages: list[dict]) -> str:
    if not stages:
        return "No training stage is recorded in this checkpoint's config (built from parts or converted)."
    lines = ["| stage | hyper-parameters |", "|---|---|"]
    for stage in stages:
        details = ", ".join(f"{k}={v}" for k, v in stage.items() if k not in ("stage", "step") and v is not None)
        lines.append(f"| {_stage_title(stage)} | {details} |")
    return "\n".join(lines)


def _stage_title(record: dict) -> str:
    """ "1b align": the stage's step and name, as the docs write it."""
    return f"{record['step']} {record['stage']}" if record.get("step") else record["stage"]


def _evaluation_section(eval_results: dict | None) -> str:
    if not eval_results:
        return "Not evaluated yet: `dali-hf evaluate --model PATH --data ...` writes the scores."
    metrics = sorted({m for entry in eval_results.values() for m in entry["scores"]})
    lines = ["| dataset | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for dataset, entry in eval_results.items():
        values = [f"{100 * entry['scores'][m]:.1f}" if m in entry["scores"] else "" for m in metrics]
        lines.append(f"| {dataset} ({entry.get('split', 'test')}) | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _plain(value):
    return value if isinstance(value, (str, int, float, bool, type(None), list)) else str(value)
