"""Benchmark readers (AudioCaps, Clotho, Hugging Face datasets) and the evaluation runner behind `dali-hf evaluate`.

Every reader returns a `datasets.Dataset` with `id`, `audio` (a file path or an {"array", "sampling_rate"} dict)
and `references` (the clip's human captions), plus the list of clips whose audio file is missing: those are
counted and reported, never dropped silently.
"""

import csv
import json
import os
from collections import OrderedDict
from pathlib import Path

import datasets
from transformers.utils import logging

from .errors import InputError
from .modeling.media import MEDIA_EXTENSIONS

__all__ = ["CAPTIONS_FILE", "LONG_CLIP_POLICIES", "read_audiocaps", "read_clotho", "read_hf_dataset", "evaluate_captioner",
           "metrics_to_compute"]

# How a clip longer than the audio encoder's window is captioned for scoring. "first_window" (default): one caption
# of its first window, as the paper's evaluation does (clips are cut to the encoder's 10.24 s input). "joined_chunks":
# every window captioned, the captions joined with spaces into one.
LONG_CLIP_POLICIES = ("first_window", "joined_chunks")

logger = logging.get_logger(__name__)


def read_audiocaps(csv_path: str, audio_dir: str, filename: str | None = None) -> tuple[datasets.Dataset, list[dict]]:
    """AudioCaps csv (`audiocap_id, youtube_id, start_time, caption`; 5 rows per test clip), grouped by clip.

    `filename`: how audio files are named, with `{youtube_id}`, `{start_time}` and `{audiocap_id}` fields (e.g.
    "{youtube_id}_{start_time}.wav"). By default a file of `audio_dir` named after the clip: `{youtube_id}` (or
    "Y" + id, as AudioSet downloads name them), optionally followed by `_{start}` or `_{start}_{end}` in seconds;
    a file with a start time matches only the clip that starts there, and the id must match whole.
    """
    clips: OrderedDict[tuple[str, str], dict] = OrderedDict()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _require_columns(reader.fieldnames, ("audiocap_id", "youtube_id", "start_time", "caption"), csv_path)
        for row in reader:
            key = (row["youtube_id"], row["start_time"])
            clip = clips.setdefault(key, {"audiocap_id": row["audiocap_id"], "references": []})
            clip["references"].append(row["caption"].strip())
    index = _index_audio_dir(audio_dir) if filename is None else None
    rows, missing = [], []
    for (youtube_id, start_time), clip in clips.items():
        clip_id = f"{youtube_id}_{start_time}"
        if filename is not None:
            path = os.path.join(audio_dir, filename.format(youtube_id=youtube_id, start_time=start_time,
                                                           audiocap_id=clip["audiocap_id"]))
            path = path if os.path.isfile(path) else None
        else:
            path = _find_clip(index, youtube_id, start_time)
        if path is None:
            missing.append({"id": clip_id, "reason": f"no audio file for YouTube id {youtube_id} in {audio_dir}"})
            continue
        rows.append({"id": clip_id, "audio": path, "references": clip["references"]})
    return _dataset(rows, missing, csv_path)


def read_clotho(csv_path: str, audio_dir: str) -> tuple[datasets.Dataset, list[dict]]:
    """Clotho captions csv (`file_name, caption_1 .. caption_5`), audio files in `audio_dir`."""
    rows, missing = [], []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        _require_columns(reader.fieldnames, ("file_name", "caption_1"), csv_path)
        caption_columns = sorted((c for c in reader.fieldnames if c.startswith("caption_")),
                                 key=lambda c: int(c.split("_")[1]))
        for row in reader:
            path = os.path.join(audio_dir, row["file_name"])
            if not os.path.isfile(path):
                missing.append({"id": row["file_name"], "reason": f"audio file not found: {path}"})
                continue
            rows.append({"id": row["file_name"], "audio": path,
                         "references": [row[c].strip() for c in caption_columns if row[c].strip()]})
    return _dataset(rows, missing, csv_path)


def read_hf_dataset(dataset: datasets.Dataset, audio_column: str = "audio", caption_columns=None,
                    id_column: str | None = "id") -> tuple[datasets.Dataset, list[dict]]:
    """A Hugging Face dataset with an audio column and caption column(s): `caption_columns` is a list of string
    columns or one column holding a list of captions (default: every column whose name starts with "caption")."""
    columns = dataset.column_names
    if audio_column not in columns:
        raise ValueError(f"no audio column {audio_column!r} in the dataset (columns: {columns})")
    if caption_columns is None:
        caption_columns = [c for c in columns if c.startswith("caption")]
    caption_columns = [caption_columns] if isinstance(caption_columns, str) else list(caption_columns)
    if not caption_columns:
        raise ValueError(f"no caption columns found (columns: {columns}): pass caption_columns=")
    rows, missing = [], []
    for index, example in enumerate(dataset):
        clip_id = str(example[id_column]) if id_column in columns else str(index)
        references = []
        for column in caption_columns:
            value = example[column]
            references += [value] if isinstance(value, str) else list(value)
        audio = example[audio_column]
        if isinstance(audio, str) and not os.path.isfile(audio):
            missing.append({"id": clip_id, "reason": f"audio file not found: {audio}"})
            continue
        rows.append({"id": clip_id, "audio": audio, "references": [r.strip() for r in references if r.strip()]})
    return _dataset(rows, missing, "the dataset")


def metrics_to_compute(metrics=None) -> tuple[list[str], dict[str, str]]:
    """(metrics to compute, {metric left out: why}), checked before any clip is captioned: a missing COCO caption
    toolkit (the `eval` extra) or Java, unknown names, and SPICE / SPIDEr asked for without Stanford CoreNLP, are
    errors; by default every metric that can run here."""
    from .metrics import ALL_METRICS, SpiceUnavailableError, check_scoring_tools, spice_available

    check_scoring_tools()
    needs_corenlp = ("spice", "spider")
    if metrics is None:
        if spice_available():
            return list(ALL_METRICS), {}
        reason = ("Stanford CoreNLP 3.6.0 is not installed (SPICE needs it; SPIDEr is the mean of CIDEr-D and "
                  "SPICE): install it with `python -m dali_hf.metrics install-corenlp FOLDER`")
        return [m for m in ALL_METRICS if m not in needs_corenlp], {m: reason for m in needs_corenlp}
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = sorted(set(wanted) - set(ALL_METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}: choose from {list(ALL_METRICS)}")
    asked = sorted(set(wanted) & set(needs_corenlp))
    if asked and not spice_available():
        raise SpiceUnavailableError(
            f"cannot compute {asked}: SPICE needs Stanford CoreNLP 3.6.0, which no package registry ships. Download "
            "stanford-corenlp-full-2015-12-09.zip from the Stanford NLP site, unzip it, and install its jars with "
            "`python -m dali_hf.metrics install-corenlp FOLDER`; or leave --metrics out to compute every other metric")
    return wanted, {}


CAPTIONS_FILE = "captions.jsonl"


def evaluate_captioner(model, data: datasets.Dataset, output_dir: str, mode: str = "audio", batch_size: int = 8,
                       max_new_tokens: int = 64, metrics=None, dataset_name: str = "custom", split: str = "test",
                       model_name: str | None = None, missing: list[dict] | None = None,
                       long_clips: str = "first_window", resume: bool = False, overwrite: bool = False,
                       progress: bool = True) -> dict:
    """Caption every clip of `data` (greedy: reproducible), score against the references, and write
    `captions.jsonl`, `scores.json` and `model_index.json` (a model-index block for a model card) to
    `output_dir`. Returns the scores.

    One caption per clip: `long_clips` says how a clip longer than the audio encoder's window is captioned (see
    `LONG_CLIP_POLICIES`; by default from its first window, as the paper scores AudioCaps and Clotho). Silence is
    not detected here (the model's own caption is scored, as in the paper). Metric names and the availability of
    SPICE are checked before any clip is captioned; `scores.json` lists the metrics left out and why, and the clips
    that failed or had no audio (`clips_failed`: `{"id", "reason"}` each).

    Each clip's line is written to `captions.jsonl` as it is captioned: an existing one is refused unless `resume`
    (its clips are kept, the rest captioned) or `overwrite`. Under `accelerate launch` the clips are split between
    the processes; the files are those one process writes, and the main process scores.
    """
    from huggingface_hub.repocard_data import eval_results_to_model_index
    from transformers import pipeline

    from .captioning import caption_rows
    from .metrics import score
    from .model_cards import eval_results_of
    from .modeling.media import media_duration
    from .trainers.jobs import check_output_dir, job_state, run_job

    if long_clips not in LONG_CLIP_POLICIES:
        raise ValueError(f"long_clips must be one of {LONG_CLIP_POLICIES}, got {long_clips!r}")
    wanted, not_computed = metrics_to_compute(metrics)
    check_output_dir(output_dir, [CAPTIONS_FILE], resume=resume, overwrite=overwrite, name="output folder")
    state = job_state()
    if state.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
    state.wait_for_everyone()
    if isinstance(model, str):
        captioner = pipeline("audio-captioning", model=model, device=state.device if state.num_processes > 1 else None)
    else:
        captioner = model
    ids = [str(clip_id) for clip_id in data["id"]]
    call = dict(mode=mode, max_new_tokens=max_new_tokens, silence_threshold_db=None,
                long_audio="first_window" if long_clips == "first_window" else "chunks")

    def produce(indices):
        results = caption_rows(captioner, (data[i]["audio"] for i in indices), batch_size=batch_size, **call)
        for index, result in zip(indices, results, strict=True):
            yield index, {"id": ids[index], **_one_caption(result), "references": data[index]["references"]}

    audio_feature = data.features.get("audio")
    paths = isinstance(audio_feature, datasets.Value) and audio_feature.dtype == "string"
    (rows,) = run_job(ids, [os.path.join(output_dir, CAPTIONS_FILE)], produce, key="id", resume=resume,
                      overwrite=overwrite, weight=(lambda i: media_duration(data[i]["audio"])) if paths else None,
                      progress=progress, description="evaluating", unit="clip")
    known = set(ids)
    rows = [row for row in rows if row["id"] in known]
    scored = [(row["caption"], row["references"]) for row in rows if "caption" in row]
    if not scored:
        raise RuntimeError(f"no clip could be captioned; see {output_dir}/{CAPTIONS_FILE}")
    failed = [{"id": row["id"], "reason": row["reason"]} for row in missing or []]
    failed += [{"id": row["id"], "reason": row["error"]} for row in rows if "error" in row]
    scores_path = Path(output_dir, "scores.json")
    if state.is_main_process:
        results = score([c for c, _ in scored], [r for _, r in scored], wanted)
        report = {"scores": results, "split": split, "not_computed": not_computed, "clips_scored": len(scored),
                  "clips_failed": failed, "mode": mode, "long_clips": long_clips,
                  "decoding": {"do_sample": False, "max_new_tokens": max_new_tokens}}
        scores_path.write_text(json.dumps(report, indent=2))
        eval_results = eval_results_of(dataset_name, report)  # the record `dali-hf push --eval-results` reads
        model_index = eval_results_to_model_index(model_name or "dali", eval_results)
        Path(output_dir, "model_index.json").write_text(json.dumps(model_index, indent=2))
        if failed:
            logger.warning("%d clips could not be captioned or had no audio; listed in scores.json", len(failed))
        for name, why in not_computed.items():
            logger.warning("%s not computed: %s", name, why)
    state.wait_for_everyone()
    return json.loads(scores_path.read_text())["scores"]


def _one_caption(row: dict) -> dict:
    """A captioned clip's row with one caption: a long clip's window captions joined (the `joined_chunks`
    policy), the windows kept beside it."""
    if "chunks" in row:
        return {**row, "caption": " ".join(chunk["caption"] for chunk in row["chunks"])}
    return row


def _index_audio_dir(audio_dir: str) -> dict[tuple[str, float | None], str]:
    """{(name, start seconds or None): path} of the media files in `audio_dir`: "ID.wav" gives (ID, None),
    "ID_30.wav" and "ID_30.000_40.000.wav" give (ID, 30.0) too. YouTube ids contain "_" and "-", so every split of
    the name into an id and one or two trailing numbers is indexed; lookups are by whole id."""
    if not os.path.isdir(audio_dir):
        raise FileNotFoundError(f"audio folder not found: {audio_dir}")
    index = {}
    for path in sorted(Path(audio_dir).iterdir()):
        if path.suffix.lower() not in MEDIA_EXTENSIONS:
            continue
        index.setdefault((path.stem, None), str(path))
        parts = path.stem.split("_")
        for split in range(max(1, len(parts) - 2), len(parts)):
            numbers = [_seconds(part) for part in parts[split:]]
            if all(n is not None for n in numbers):
                index.setdefault(("_".join(parts[:split]), numbers[0]), str(path))
    return index


def _find_clip(index: dict, youtube_id: str, start_time: str) -> str | None:
    start = _seconds(start_time)
    for name in (youtube_id, "Y" + youtube_id):
        path = index.get((name, start)) or index.get((name, None))
        if path:
            return path
    return None


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


class BenchmarkFileError(InputError):
    """A benchmark file that is not in the format it was read as; the message names the file and the fix."""


def _require_columns(found, needed, path) -> None:
    missing = [c for c in needed if c not in (found or [])]
    if missing:
        fix = next((f"it looks like a {kind} csv: pass --format {kind} (or leave --format out)"
                    for kind, column in (("clotho", "file_name"), ("audiocaps", "youtube_id")) if column in (found or [])
                    and column not in needed), "the AudioCaps columns are audiocap_id, youtube_id, start_time, caption; "
                   "Clotho's file_name, caption_1 .. caption_5")
        raise BenchmarkFileError(f"{path}: missing column(s) {', '.join(missing)} (its columns: "
                                 f"{', '.join(found or []) or 'none'}): {fix}")


def _dataset(rows, missing, source) -> tuple[datasets.Dataset, list[dict]]:
    if missing:
        logger.warning("%d clips of %s have no audio file; reported, not used", len(missing), source)
    features = datasets.Features({"id": datasets.Value("string"), "audio": datasets.Value("string"),
                                  "references": datasets.List(datasets.Value("string"))})
    if rows and not isinstance(rows[0]["audio"], str):
        features = None  # in-memory audio dicts
    return datasets.Dataset.from_list(rows, features=features), missing
