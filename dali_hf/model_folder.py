"""What a `--model` must be, checked before anything loads: a saved LlavaAudio captioner (a folder, or a Hub id).

`check_model_folder(path)` reads only config.json, the names of the files and the safetensors headers (no torch,
no transformers), so a wrong folder is a one-line error naming the folder and the fix, at once, instead of a
traceback from deep inside `from_pretrained` after seconds of imports. Every command that takes `--model` calls it.
"""

import json
import os
import struct
from pathlib import Path

from .errors import InputError

__all__ = ["ModelFolderError", "check_model_folder"]

CAPTIONER_TYPE = "llava_audio"
SAVE_HINT = "model.save_pretrained(folder) and processor.save_pretrained(folder)"


class ModelFolderError(InputError):
    """A `--model` that is not a loadable LlavaAudio captioner; the message names it and the fix."""


def check_model_folder(path, name: str = "--model", hub: bool = True) -> None:
    """Raise `ModelFolderError` unless `path` is a folder holding a complete LlavaAudio captioner (config.json of
    model_type "llava_audio", whole safetensors weights, the processor's files), or (with `hub`) a Hub id whose
    config.json is one. `name` is how the message calls the input (the flag, or the recipe's entry)."""
    text = os.fspath(path)
    folder = Path(text).expanduser()
    name = f"{name} " if name else ""
    if folder.is_file():
        raise ModelFolderError(f"{name}{text} is a file, not a model folder: pass the folder of a saved LlavaAudio "
                               "captioner (config.json, model.safetensors and the processor's files)")
    if folder.is_dir():
        _check_config(folder / "config.json", text, name)
        _check_weights(folder, text, name)
        _check_processor(folder, text, name)
        return
    if not hub or not _looks_like_hub_id(text):
        raise ModelFolderError(f"{name}{text}: no such folder: pass the folder of a saved LlavaAudio captioner"
                               + (", or a Hub id (org/name)" if hub else ""))
    _check_config(_hub_config(text, name), text, name)


def _looks_like_hub_id(text: str) -> bool:
    """Whether `text` is a Hub repo id ("name" or "org/name"), by huggingface_hub's own check."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _hub_config(repo_id: str, name: str) -> Path:
    """config.json of the Hub model `repo_id` (from the cache when offline), or an error saying why not."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, "config.json"))
    except LocalEntryNotFoundError:  # before EntryNotFoundError, its base class
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        reason = ("not in the local Hub cache, and HF_HUB_OFFLINE is set" if offline
                  else "the Hub cannot be reached and the model is not in the local cache")
    except RepositoryNotFoundError:
        reason = "the Hub has no model of that name (or it is private: log in with `hf auth login`)"
    except EntryNotFoundError:
        reason = "the Hub model has no config.json"
    except Exception as error:  # network failures of every kind: one line, not a traceback
        reason = f"the Hub could not give its config.json ({type(error).__name__}: {error})"
    raise ModelFolderError(f"{name}{repo_id}: no such folder, and as a Hub id: {reason}")


def _check_config(config_file: Path, text: str, name: str) -> None:
    if not config_file.is_file():
        if (config_file.parent / "adapter_config.json").is_file():
            raise ModelFolderError(f"{name}{text} is a PEFT adapter, not a whole captioner: merge it into its base "
                                   "(PeftModel.from_pretrained(base, folder).merge_and_unload()) and save that with "
                                   f"{SAVE_HINT}")
        empty = not any(config_file.parent.iterdir())
        raise ModelFolderError(
            f"{name}{text} {'is an empty folder' if empty else 'has no config.json'}: not a saved model; pass the "
            f"folder a captioner was saved to ({SAVE_HINT})")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFolderError(f"{name}{text}: its config.json is not valid JSON ({error}): save the model again "
                               f"({SAVE_HINT})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type == "llava":
        raise ModelFolderError(
            f"{name}{text} is a plain LLaVA (model_type 'llava'), not a LlavaAudio captioner: build one from it with "
            "LlavaAudioForConditionalGeneration.from_llava and LlavaAudioProcessor.from_llava, or `dali-hf "
            "convert-official --llava ...` for the DALI release")
    if model_type != CAPTIONER_TYPE:
        raise ModelFolderError(f"{name}{text} is a {model_type or 'model without a model_type'!s} model, not a "
                               f"LlavaAudio captioner (model_type '{CAPTIONER_TYPE}'): pass a DALI captioner's folder")


def _check_weights(folder: Path, text: str, name: str) -> None:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelFolderError(f"{name}{text}: model.safetensors.index.json is not a safetensors index: save "
                                   f"the model again ({SAVE_HINT})") from None
    elif (folder / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        other = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        found = f" (it has {', '.join(other)}: not the safetensors a saved captioner has)" if other else ""
        raise ModelFolderError(f"{name}{text} has no weights (model.safetensors){found}: save the model into it "
                               f"with {SAVE_HINT}")
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise ModelFolderError(f"{name}{text} lacks weight file(s) {', '.join(missing)} named in its "
                               "model.safetensors.index.json: copy or download the folder again")
    for shard in shards:
        problem = safetensors_problem(folder / shard)
        if problem:
            raise ModelFolderError(f"{name}{text}: {shard} {problem}: copy, download or save it again")


def safetensors_problem(path: Path) -> str | None:
    """Why the file at `path` is not a whole safetensors file (its header and the size it announces), or None."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"is truncated ({size} bytes: not even a header)"
        (header_length,) = struct.unpack("<Q", head)
        if header_length > size - 8:
            return f"is truncated or not a safetensors file ({size} bytes, its header alone announces {header_length})"
        try:
            header = json.loads(handle.read(header_length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "is corrupt (its header is not a safetensors header)"
    if 8 + header_length + end != size:
        return (f"is truncated ({size} bytes of the {8 + header_length + end} its header announces)" if
                8 + header_length + end > size else f"is corrupt ({size} bytes, its header announces "
                                                    f"{8 + header_length + end})")
    return None


def _check_processor(folder: Path, text: str, name: str) -> None:
    needed = ["processor_config.json", "tokenizer_config.json"]
    missing = [file for file in needed if not (folder / file).is_file()]
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        missing.append("tokenizer.json")
    if missing:
        raise ModelFolderError(f"{name}{text} lacks the processor's files ({', '.join(missing)}): save the "
                               "processor into it with processor.save_pretrained(folder) (LlavaAudioProcessor)")
