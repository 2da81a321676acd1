"""Caption many files with the pipeline: results to jsonl as they come, unreadable files reported, the run goes on."""

import json
import os
from pathlib import Path

from tqdm.auto import tqdm

from .modeling.audio_decoding import AudioInputError

__all__ = ["MEDIA_EXTENSIONS", "caption_files", "find_media"]

MEDIA_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".mp4", ".mkv", ".webm", ".avi",
                    ".mov", ".m4v")


def find_media(paths: list[str]) -> list[str]:
    """Files as given, and the audio/video files found (recursively, sorted) under the folders given."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(str(p) for p in Path(path).rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS)
        else:
            found.append(path)
    return found


def caption_files(captioner, files: list[str], output: str, batch_size: int = 1, progress: bool = True,
                  **call_kwargs) -> dict:
    """Caption `files` in batches, writing one json line per file to `output`: {"file", "caption"} (and
    "segments" with timestamps for long audio) or {"file", "error"}. Returns {"captioned": n, "failed": [...]}."""
    failed, captioned = [], 0
    with open(output, "w", encoding="utf-8") as handle, tqdm(total=len(files), disable=not progress,
                                                             desc="captioning", unit="file") as bar:
        for start in range(0, len(files), batch_size):
            group = files[start:start + batch_size]
            try:
                results = list(zip(group, captioner(group, batch_size=batch_size, **call_kwargs), strict=True))
            except (AudioInputError, OSError, RuntimeError, ValueError):  # find which file: one at a time
                results = []
                for file in group:
                    try:
                        results.append((file, captioner(file, **call_kwargs)))
                    except (AudioInputError, OSError, RuntimeError, ValueError) as error:
                        results.append((file, error))
            for file, result in results:
                if isinstance(result, Exception):
                    row = {"file": file, "error": f"{type(result).__name__}: {result}"}
                    failed.append(row)
                else:
                    row = {"file": file, "caption": " ".join(r["caption"] for r in result)}
                    if "timestamp" in result[0]:
                        row["segments"] = [{"timestamp": list(r["timestamp"]), "caption": r["caption"]}
                                           for r in result]
                    captioned += 1
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
            bar.update(len(group))
    return {"captioned": captioned, "failed": failed}
