"""Model cards and Hub uploads of DALI checkpoints.

`write_model_card(folder)` renders `model_cards/dali_model_card.md` (huggingface_hub `ModelCard`) from what the
folder's config records (base LLaVA, audio encoder, the stages that trained it) and optional evaluation results
(`model-index` metadata, plus `.eval_results/*.yaml` entries for benchmarks with a Hub dataset id).
`push(folder, repo_id)` uploads exactly the files a user needs (`upload_files(folder)`), never touching the folder.
"""

import json
import os
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .model_cards import TEMPLATE

__all__ = ["UploadError", "eval_result_files", "push", "record_stage", "render_model_card", "upload_files",
           "write_model_card"]

# What a LlavaAudio folder holds that users need; anything else (checkpoints, optimiser state, pickled training
# arguments, logs, stage markers, pseudo-caption files) stays local.
UPLOAD_PATTERNS = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "*.py", "README.md",
    "token_distributions.png", ".eval_results/*.yaml",
)
REQUIRED = ("config.json", "processor_config.json", "tokenizer_config.json", "modeling_llava_audio.py",
            "configuration_llava_audio.py", "processing_llava_audio.py", "pipeline_audio_captioning.py")
STAGE_NAMES = {"prefix": "1a prefix tuning", "alignment": "1b distribution alignment",
               "distillation": "2 audiovisual distillation"}


class UploadError(RuntimeError):
    """An upload that could not be done; the message says why and what to do. The local folder is unchanged."""


def record_stage(config, stage: str, args, train_rows: int | None = None, fields: tuple[str, ...] = ()) -> None:
    """Add (or replace) this stage's record in `config.training_stages`: the hyper-parameters a model card shows."""
    record = {"stage": stage, "train_rows": train_rows, "world_size": args.world_size,
              "per_device_train_batch_size": args.per_device_train_batch_size,
              "gradient_accumulation_steps": args.gradient_accumulation_steps, "learning_rate": args.learning_rate,
              "num_train_epochs": args.num_train_epochs, "max_steps": args.max_steps, "seed": args.seed,
              **{name: _plain(getattr(args, name)) for name in fields}}
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
    alignment = next((s for s in stages if s["stage"] == "alignment"), None)
    objective = alignment["objective"] if alignment else "none recorded"
    results = []
    for dataset, entry in (eval_results or {}).items():
        for metric, value in entry["scores"].items():
            results.append(EvalResult(task_type="audio-captioning", task_name="Audio captioning",
                                      dataset_type=entry.get("dataset_id") or dataset.lower(), dataset_name=dataset,
                                      dataset_split=entry.get("split", "test"), metric_type=metric,
                                      metric_name=metric.upper(), metric_value=round(100 * value, 2)))
    card_data = ModelCardData(
        library_name="transformers", pipeline_tag="audio-text-to-text", license=license, base_model=base_model,
        tags=["audio-captioning", "dali", "llava", "zero-shot", "custom_code"], datasets=datasets,
        model_name=repo_id, eval_results=results or None,
    )
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATE), model_title=repo_id.split("/")[-1], repo_id=repo_id,
        base_model=base_model, audio_encoder=config.get("audio_config", {}).get("model_type", "unknown"),
        objective=objective, stages_summary=", ".join(STAGE_NAMES.get(s["stage"], s["stage"]) for s in stages)
        or "none recorded (built from parts or converted)",
        training_section=_training_section(stages), evaluation_section=_evaluation_section(eval_results),
    )


def write_model_card(folder, repo_id: str | None = None, eval_results: dict | None = None, **card_kwargs) -> ModelCard:
    """Render the model card into `folder/README.md`, and `.eval_results/<dataset>.yaml` (the Hub's newer format)
    for evaluated datasets that have a Hub id; returns the card."""
    card = render_model_card(folder, repo_id, eval_results, **card_kwargs)
    card.save(Path(folder) / "README.md")
    for name, content in eval_result_files(eval_results).items():
        os.makedirs(Path(folder) / ".eval_results", exist_ok=True)
        (Path(folder) / name).write_text(content)
    return card


def upload_files(folder) -> list[str]:
    """The files of `folder` to upload, relative paths, sorted; an error if the folder is not a complete model."""
    folder = Path(folder)
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if not any(folder.glob("*.safetensors")):
        missing.append("model.safetensors (the weights)")
    if missing:
        raise UploadError(f"{folder} is not a complete LlavaAudio folder: missing {', '.join(missing)}. Save it with "
                          "model.save_pretrained(folder) and processor.save_pretrained(folder).")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and any(fnmatch(relative, pattern) and relative.count("/") == pattern.count("/")
                                  for pattern in UPLOAD_PATTERNS):
            files.append(relative)
    return files


def push(folder, repo_id: str, private: bool = False, revision: str | None = None, create_pr: bool = False,
         dry_run: bool = False, token: str | None = None, eval_results: dict | None = None,
         commit_message: str = "Upload DALI captioner") -> list[str]:
    """Upload `upload_files(folder)` to the model repo `repo_id` (created if needed) in one commit; returns the
    uploaded paths (`dry_run`: only returns them). The folder is never modified: a model card (README.md) is
    rendered in memory when the folder has none or when `eval_results` are given."""
    from huggingface_hub import CommitOperationAdd

    folder = Path(folder)
    files = upload_files(folder)
    generated = {}
    if eval_results or "README.md" not in files:
        generated["README.md"] = str(render_model_card(folder, repo_id, eval_results)).encode()
        generated.update({name: content.encode() for name, content in eval_result_files(eval_results).items()})
    paths = sorted(set(files) | set(generated))
    if dry_run:
        return paths
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    token = token or get_token()
    if not token:
        raise UploadError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=generated.get(path, str(folder / path)))
                  for path in paths]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision,
                          create_pr=create_pr)
    except RepositoryNotFoundError as error:
        raise UploadError(f"repository {repo_id} not found or not writable with this token: check the name and the "
                          f"token's rights ({error})") from error
    except HfHubHTTPError as error:
        raise UploadError(f"the Hub refused the upload to {repo_id}: {error}") from error
    except Exception as error:  # transport failures (httpx/OSError): the Hub could not be reached
        if isinstance(error, OSError) or any(word in type(error).__name__.lower()
                                             for word in ("connect", "timeout", "network", "transport")):
            raise UploadError(f"cannot reach the Hub ({type(error).__name__}: {error}); check the network and "
                              "retry: nothing was changed locally") from error
        raise
    return paths


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
        details = ", ".join(f"{k}={v}" for k, v in stage.items() if k != "stage" and v is not None)
        lines.append(f"| {STAGE_NAMES.get(stage['stage'], stage['stage'])} | {details} |")
    return "\n".join(lines)


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
