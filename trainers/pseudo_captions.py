"""Stage 2 of DALI, its data: pseudo-captions of (audio, frame) pairs made by the aligned captioner from image + audio
tokens + prefix (docs/method.md, section 5).

`generate_pseudo_captions` writes them in batches to a jsonl file, so an interrupted run resumes after the last
written batch (no duplicates); clips that cannot be decoded are listed with the reason, never replaced.
`attach_captions` joins them to the pairs for [`AudioVisualDistillationTrainer`].
"""

import json
import logging
import os

import datasets
import torch

from ..modeling.media import AudioInputError, load_image, prepare_audio

__all__ = ["PSEUDO_CAPTIONS_FILE", "SKIPPED_FILE", "attach_captions", "generate_pseudo_captions"]

PSEUDO_CAPTIONS_FILE = "pseudo_captions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SETTINGS_FILE = "generation_settings.json"
logger = logging.getLogger(__name__)


@torch.no_grad()
def generate_pseudo_captions(model, processor, dataset, output_dir: str, batch_size: int = 8,
                             prompt: str | None = None, prompt_preset: str | None = None,
                             **generate_kwargs) -> datasets.Dataset:
    """Caption every (audio, image) row of `dataset` from image + audio + prefix; returns a dataset (`id`,
    `caption`) saved under `output_dir/dataset`.

    Each finished batch is appended to `output_dir/pseudo_captions.jsonl`, so a restart skips the ids already
    there (a line cut by a kill is dropped and redone). Rows whose audio or image cannot be read go to
    `skipped.jsonl` with the reason. Decoding defaults to greedy (reproducible); pass e.g. `do_sample=True,
    temperature=0.2, max_new_tokens=128` for the reference code's sampling. The settings are written to
    `generation_settings.json`. `prompt_preset` (default: the processor's) chooses the system text, see
    `LlavaAudioProcessor.caption_prompt`.
    """
    os.makedirs(output_dir, exist_ok=True)
    settings = {"max_new_tokens": 128, "do_sample": False} | generate_kwargs
    text = processor.caption_prompt(image=True, audio=True, prefix=True, prompt=prompt, prompt_preset=prompt_preset)
    recorded = {"model": str(model.name_or_path), "prompt": text, **settings}
    settings_path = os.path.join(output_dir, SETTINGS_FILE)
    captions_path = os.path.join(output_dir, PSEUDO_CAPTIONS_FILE)
    if os.path.exists(captions_path) and os.path.exists(settings_path):
        with open(settings_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if {k: previous.get(k) for k in recorded} != json.loads(json.dumps(recorded, default=str)):
            raise ValueError(f"{output_dir} holds pseudo-captions made by another model or with other settings "
                             f"({previous}); resume with the same ones, or use a new folder")
    _write_json(settings_path, {**recorded, "batch_size": batch_size})
    done = {row["id"] for row in _read_jsonl(captions_path, repair=True)}
    skipped_path = os.path.join(output_dir, SKIPPED_FILE)
    done |= {row["id"] for row in _read_jsonl(skipped_path, repair=True)}

    model.eval()
    rate = processor.feature_extractor.sampling_rate
    pending = [i for i, item_id in enumerate(dataset["id"]) if str(item_id) not in done]
    for start in range(0, len(pending), batch_size):
        rows, skipped = [], []
        for index in pending[start:start + batch_size]:
            example = dataset[index]
            try:
                rows.append((str(example["id"]), prepare_audio(example["audio"], rate),
                             load_image(example["image"])))
            except (AudioInputError, ValueError) as error:
                skipped.append({"id": str(example["id"]), "reason": str(error)})
        if rows:
            ids, clips, images = zip(*rows, strict=True)
            inputs = processor(text=[text] * len(ids), images=list(images), audio=list(clips), sampling_rate=rate,
                               return_tensors="pt").to(model.device)
            generated = model.generate(**inputs, **settings)[:, inputs["input_ids"].shape[1]:]
            captions = processor.batch_decode(generated, skip_special_tokens=True)
            _append_jsonl(captions_path, [{"id": i, "caption": c.strip()} for i, c in zip(ids, captions, strict=True)])
        _append_jsonl(skipped_path, skipped)

    result = datasets.Dataset.from_list(list(_read_jsonl(captions_path)),
                                        features=datasets.Features({"id": datasets.Value("string"),
                                                                    "caption": datasets.Value("string")}))
    result.save_to_disk(os.path.join(output_dir, "dataset"))
    return result


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


def _read_jsonl(path: str, repair: bool = False) -> list[dict]:
    """Rows of a jsonl file; with `repair`, a last line cut by a kill (no newline, or not JSON) is cut off the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            rows.append(json.loads(line))
        except ValueError:  # json.JSONDecodeError is a ValueError
            break
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good)
    return rows


def _append_jsonl(path: str, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, default=str)
