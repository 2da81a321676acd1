"""Caption many files with the pipeline: results to jsonl as they come, unreadable files reported, the run goes on."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from .modeling.media import MEDIA_EXTENSIONS

__all__ = ["caption_files", "caption_rows", "find_media"]


def find_media(paths: list[str], extensions: tuple[str, ...] = MEDIA_EXTENSIONS) -> list[str]:
    """Files as given, and the files with one of `extensions` (audio and video by default) found (recursively,
    sorted) under the folders given."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(str(p) for p in Path(path).rglob("*") if p.suffix.lower() in extensions)
        else:
            found.append(path)
    return found


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


def caption_files(captioner, files: list, output: str, batch_size: int = 1, progress: bool = True,
                  names: list[str] | None = None, **call_kwargs) -> dict:
    """Caption `files` (paths, or any pipeline input) in batches, writing one json line per input to `output` (see
    `caption_rows`) with its "file": the path, or `names[i]` when given. Returns {"captioned": n, "failed": [...]}."""
    names = [str(f) for f in files] if names is None else list(names)
    failed, captioned = [], 0
    with open(output, "w", encoding="utf-8") as handle, tqdm(total=len(files), disable=not progress,
                                                             desc="captioning", unit="file") as bar:
        for name, result in zip(names, caption_rows(captioner, files, batch_size, **call_kwargs), strict=True):
            row = {"file": name, **result}
            if "error" in row:
                failed.append(row)
            else:
                captioned += 1
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            bar.update(1)
    return {"captioned": captioned, "failed": failed}


def _row(result: dict) -> dict:
    """A pipeline result as json: timestamps as lists."""
    if "chunks" in result:
        return {**result, "chunks": [{**chunk, "timestamp": list(chunk["timestamp"])} for chunk in result["chunks"]]}
    return dict(result)
