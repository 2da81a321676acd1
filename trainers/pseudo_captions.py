"""Stage 2 of DALI, its data: pseudo-captions of (audio, frame) pairs made by the aligned captioner from image + audio
tokens + prefix (docs/method.md, section 5).

`generate_pseudo_captions` writes them one whole line at a time to a jsonl file, so an interrupted run resumes after
the last line written (no duplicates), over one process or several; clips that cannot be decoded are listed with the
reason, never replaced.
`attach_captions` joins them to the pairs for [`AudioVisualDistillationTrainer`].
"""

import json
import os

import datasets
from transformers.utils import logging

from ..modeling.media import media_duration
from ..modeling.pipeline_audio_captioning import CaptionRequest, captioning_engine
from .jobs import job_state, run_job, shard_paths

__all__ = ["PSEUDO_CAPTIONS_FILE", "SKIPPED_FILE", "attach_captions", "generate_pseudo_captions"]

PSEUDO_CAPTIONS_FILE = "pseudo_captions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SETTINGS_FILE = "generation_settings.json"
logger = logging.get_logger(__name__)


def generate_pseudo_captions(model, processor, dataset, output_dir: str, batch_size: int = 8,
                             prompt: str | None = None, prompt_preset: str | None = None, resume: bool = True,
                             overwrite: bool = False, progress: bool = True, **generate_kwargs) -> datasets.Dataset:
    """Caption every (audio, image) row of `dataset` from image + audio + prefix; returns a dataset (`id`,
    `caption`) saved under `output_dir/dataset`.

    Each caption is written whole to `output_dir/pseudo_captions.jsonl` as it comes, so a restart (`resume`, the
    default) skips the ids already there (a line cut by a kill is dropped and redone); `overwrite` starts again,
    and with neither an existing output is an error. Rows whose audio or image cannot be read go to
    `skipped.jsonl` with the reason. Under `accelerate launch` the rows are split between the processes and the
    files are those one process writes (see `trainers/jobs.py`). Decoding defaults to greedy (reproducible); pass
    e.g. `do_sample=True, temperature=0.2, max_new_tokens=128` for the reference code's sampling. The settings are
    written to `generation_settings.json`. `prompt_preset` (default: the processor's) chooses the system text, see
    `LlavaAudioProcessor.caption_prompt`. `progress`: a progress bar on the main process.
    """

    os.makedirs(output_dir, exist_ok=True)
    settings = {"max_new_tokens": 128, "do_sample": False} | generate_kwargs
    text = processor.caption_prompt(image=True, audio=True, prefix=True, prompt=prompt, prompt_preset=prompt_preset)
    recorded = {"model": str(model.name_or_path), "prompt": text, **settings}
    settings_path = os.path.join(output_dir, SETTINGS_FILE)
    captions_path = os.path.join(output_dir, PSEUDO_CAPTIONS_FILE)
    skipped_path = os.path.join(output_dir, SKIPPED_FILE)
    if resume and not overwrite and os.path.exists(settings_path) and \
            (os.path.exists(captions_path) or shard_paths(captions_path)):
        with open(settings_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if {k: previous.get(k) for k in recorded} != json.loads(json.dumps(recorded, default=str)):
            raise ValueError(f"{output_dir} holds pseudo-captions made by another model or with other settings "
                             f"({previous}); resume with the same ones, or use a new folder")

    model.eval()
    ids = [str(item_id) for item_id in dataset["id"]]
    audio_feature = dataset.features.get("audio") if getattr(dataset, "features", None) else None
    paths = isinstance(audio_feature, datasets.Value) and audio_feature.dtype == "string"
    captioner = captioning_engine(model, processor)

    def produce(indices):
        requests = (_request(dataset[index], ids[index]) for index in indices)
        # image + audio + prefix, the clip's first window, no silence check: the captioner's own caption of every pair
        results = captioner(requests, mode="audiovisual", prompt=prompt, prompt_preset=prompt_preset,
                            batch_size=batch_size, long_audio="first_window", silence_threshold_db=None,
                            on_error="return", generate_kwargs=settings)
        for index, (result,) in zip(indices, results, strict=True):
            if "error" in result:
                yield index, {"id": ids[index], "reason": result["error"]}
            else:
                yield index, {"id": ids[index], "caption": result["caption"]}

    captions, _ = run_job(ids, [captions_path, skipped_path], produce, key="id",
                          route=lambda row: 0 if "caption" in row else 1, resume=resume, overwrite=overwrite,
                          weight=(lambda i: media_duration(dataset[i]["audio"])) if paths else None,
                          prepare=lambda: _write_json(settings_path, {**recorded, "batch_size": batch_size}),
                          progress=progress, description="pseudo-captioning", unit="clip")
    result = datasets.Dataset.from_list(captions, features=datasets.Features({"id": datasets.Value("string"),
                                                                               "caption": datasets.Value("string")}))
    state = job_state()
    if state.is_main_process:
        result.save_to_disk(os.path.join(output_dir, "dataset"))
    state.wait_for_everyone()
    return result


def _request(example: dict, item_id: str) -> CaptionRequest:
    return CaptionRequest(audio=example["audio"], image=example["image"], name=f"clip {item_id}")


def attach_captions(pairs: datasets.Dataset, captions: datasets.Dataset) -> datasets.Dataset:
    """`pairs` rows that have a caption in `captions` (matched by `id`), with that caption as column `caption`. A
    `caption` column that `pairs` already has (e.g. human captions) is replaced, and the log says so."""
    by_id = dict(zip(captions["id"], captions["caption"], strict=True))
    keep = [i for i, item_id in enumerate(pairs["id"]) if str(item_id) in by_id]
    selected = pairs.select(keep)
    if "caption" in selected.column_names:
        logger.warning("the pairs already have a 'caption' column: the pseudo-captions replace it for distillation")
        selected = selected.remove_columns("caption")
    return selected.add_column("caption", [by_id[str(i)] for i in selected["id"]])


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, default=str)
