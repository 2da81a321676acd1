"""Caption many files with the pipeline: one json line per input as it comes, unreadable inputs recorded and the run
going on, resumable, over as many processes as `accelerate launch` starts (see `trainers/jobs.py`)."""

import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from .modeling.media import MEDIA_EXTENSIONS, media_duration
from .trainers.jobs import read_jsonl, run_job, shard_paths

__all__ = ["caption_files", "caption_rows", "find_media", "scan_media"]


def scan_media(paths: Sequence[str], extensions: tuple[str, ...] = MEDIA_EXTENSIONS) -> tuple[list[str], Counter]:
    """(files, skipped): the files given, then the files with one of `extensions` (audio and video by default)
    found recursively, sorted, under the folders given, each file once; `skipped` counts the files of those
    folders left out, by extension ("" for none)."""
    found, seen, skipped = [], set(), Counter()
    for path in paths:
        if os.path.isdir(path):
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            chosen = [str(p) for p in files if p.suffix.lower() in extensions]
            skipped.update(p.suffix.lower() for p in files if p.suffix.lower() not in extensions)
        else:
            chosen = [path]
        for file in chosen:
            if os.path.abspath(file) not in seen:
                seen.add(os.path.abspath(file))
                found.append(file)
    return found, skipped


def find_media(paths: Sequence[str], extensions: tuple[str, ...] = MEDIA_EXTENSIONS) -> list[str]:
    """The files of [`scan_media`]."""
    return scan_media(paths, extensions)[0]


def caption_rows(captioner, inputs, batch_size: int = 1, **call_kwargs) -> Iterator[dict]:
    """One JSON-ready row per input of `inputs`, in input order, as the inputs are captioned: {"caption"} (with
    "silent": true for silence), {"chunks": [{"caption", "timestamp": [start, end]}, ...]} for audio longer than the
    encoder's window, or {"error": "<type>: <why>"}; a clip that decoded only in part also has "partial":
    {"decoded_s", "duration_s"}. `inputs` is anything the pipeline takes as several inputs (a list, a dataset, a
    generator), read lazily; `call_kwargs` are the pipeline's call arguments. One input's failure never stops the
    others (the pipeline's `on_error="return"`); errors of the model itself are raised."""
    stream = (item for item in inputs)  # a generator: the pipeline streams it
    for result in captioner(stream, batch_size=batch_size, on_error="return", **call_kwargs):
        yield _row(result[0])


def caption_files(captioner, files: Sequence, output: str, batch_size: int = 1, progress: bool = True,
                  names: Sequence[str] | None = None, resume: bool = False, overwrite: bool = False,
                  **call_kwargs) -> dict:
    """Caption `files` (paths, or any pipeline input) in batches, writing one json line per input to `output`:
    {"file", "caption"} (with "silent": true for silence), {"file", "chunks": [{"caption", "timestamp"}, ...]} for
    audio longer than the encoder's window (one caption per window), or {"file", "error"}; a file that decoded
    only in part also has "partial": {"decoded_s", "duration_s"}. "file" is the path, or `names[i]` when given.

    An existing `output` is refused unless `resume` (the inputs already in it are skipped, the rest appended) or
    `overwrite`. Under `accelerate launch` the inputs are split between the processes (balanced by duration) and
    `output` is the file one process writes. Returns {"captioned": n, "failed": [rows], "resumed": n} over the
    whole output."""
    names = [str(f) for f in files] if names is None else [str(n) for n in names]
    already = sum(len(read_jsonl(path)) for path in [output, *shard_paths(output)]) if resume else 0

    def produce(indices):
        results = caption_rows(captioner, (files[i] for i in indices), batch_size=batch_size, **call_kwargs)
        for index, result in zip(indices, results, strict=True):
            yield index, {"file": names[index], **result}

    (rows,) = run_job(names, [output], produce, key="file", resume=resume, overwrite=overwrite,
                      weight=lambda i: media_duration(files[i]), progress=progress, unit="file")
    wanted = set(names)
    rows = [row for row in rows if row["file"] in wanted]
    failed = [row for row in rows if "error" in row]
    return {"captioned": len(rows) - len(failed), "failed": failed, "resumed": min(already, len(rows))}


def _row(result: dict) -> dict:
    """A pipeline result as json: timestamps as lists."""
    row = dict(result)
    if "chunks" in row:
        row["chunks"] = [{**chunk, "timestamp": list(chunk["timestamp"])} for chunk in row["chunks"]]
    return row
