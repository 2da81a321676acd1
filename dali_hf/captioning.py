"""Caption many files with the pipeline: results to jsonl as they come, unreadable files reported, the run goes on."""

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from .modeling.media import MEDIA_EXTENSIONS, AudioInputError

__all__ = ["caption_files", "find_media"]


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


def caption_files(captioner, files: list, output: str, batch_size: int = 1, progress: bool = True,
                  names: list[str] | None = None, **call_kwargs) -> dict:
    """Caption `files` (paths, or any pipeline input) in batches, writing one json line per input to `output`:
    {"file", "caption"} (with "silent": true for silence), {"file", "chunks": [{"caption", "timestamp"}, ...]} for
    audio longer than the encoder's window (one caption per window), or {"file", "error"}; "file" is the path, or
    `names[i]` when given. Returns {"captioned": n, "failed": [...]}."""
    names = [str(f) for f in files] if names is None else list(names)
    failed, captioned = [], 0
    with open(output, "w", encoding="utf-8") as handle, tqdm(total=len(files), disable=not progress,
                                                             desc="captioning", unit="file") as bar:
        for start in range(0, len(files), batch_size):
            group = list(range(start, min(start + batch_size, len(files))))
            try:
                outputs = captioner([files[i] for i in group], batch_size=batch_size, **call_kwargs)
            except (AudioInputError, OSError, RuntimeError, ValueError):  # find which input: one at a time
                outputs = [_caption_or_error(captioner, files[i], call_kwargs) for i in group]
            for index, result in zip(group, outputs, strict=True):
                if isinstance(result, Exception):
                    row = {"file": names[index], "error": f"{type(result).__name__}: {result}"}
                    failed.append(row)
                else:
                    row = {"file": names[index], **_row(result[0])}
                    captioned += 1
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
            bar.update(len(group))
    return {"captioned": captioned, "failed": failed}


def _row(result: dict) -> dict:
    """A pipeline result as json: timestamps as lists."""
    if "chunks" in result:
        return {"chunks": [{**chunk, "timestamp": list(chunk["timestamp"])} for chunk in result["chunks"]]}
    return dict(result)


def _caption_or_error(captioner, item, call_kwargs):
    try:
        return captioner(item, **call_kwargs)
    except (AudioInputError, OSError, RuntimeError, ValueError) as error:
        return error
