"""Hub uploads of DALI checkpoints.

`push(folder, repo_id)` uploads exactly the files a user needs (`upload_files(folder)`), never touching the folder;
a model card (`dali_hf.model_cards`) is rendered in memory when the folder has none or when evaluation results are
given. `check_repo_id` is huggingface_hub's check of a repo id, with an error that says what to type instead.
"""

from pathlib import Path

from .model_cards import eval_result_files, render_model_card, write_model_card

__all__ = ["UploadError", "check_repo_id", "push", "upload_files", "write_model_card"]

# What a LlavaAudio folder holds that users need, as huggingface_hub's `allow_patterns`; anything else (checkpoints,
# optimiser state, pickled training arguments, logs, stage markers, pseudo-caption files) stays local.
UPLOAD_PATTERNS = (
    "*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json", "*.py", "README.md",
    "token_distributions.png", ".eval_results/*.yaml",
)
# The patterns' `*` also matches "/", so "*.py" alone would take checkpoint-2/x.py: the same names in any subfolder
# are ignored, and so is anything below .eval_results/.
IGNORE_PATTERNS = tuple(f"*/{pattern}" for pattern in UPLOAD_PATTERNS if "/" not in pattern) + (".eval_results/*/*",)
REQUIRED = ("config.json", "processor_config.json", "tokenizer_config.json", "modeling_llava_audio.py",
            "configuration_llava_audio.py", "processing_llava_audio.py", "pipeline_audio_captioning.py")


class UploadError(RuntimeError):
    """An upload that could not be done; the message says why and what to do. The local folder is unchanged."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a Hub repo id ("name" or "org/name", huggingface_hub's `validate_repo_id`), else an
    UploadError naming it and saying what a repo id is."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UploadError(f"{repo_id!r} is not a Hub repo id: use org/name or name, each part at most 96 letters, "
                          "digits, '-', '_' or '.', not starting or ending with '-' or '.', without '--' or '..', not "
                          "ending in '.git'") from error
    return repo_id


def _imported_modules(folder: Path) -> list[str]:
    """The files that the folder's code imports relatively, at any depth (what `trust_remote_code` loads with it:
    folders saved by newer code import modules that older ones do not have)."""
    from transformers.dynamic_module_utils import get_relative_imports

    modules = [name for name in REQUIRED if name.endswith(".py")]
    for name in modules:
        if (folder / name).is_file():
            modules += [f"{module}.py" for module in get_relative_imports(folder / name) if f"{module}.py" not in modules]
    return modules


def upload_files(folder) -> list[str]:
    """The files of `folder` to upload, relative paths, sorted; an error if the folder is not a complete model."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UploadError(f"{folder}: " + ("a file, not a model folder" if folder.exists() else "no such folder")
                          + ": pass the folder a LlavaAudio captioner was saved to")
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    missing += [name for name in _imported_modules(folder) if not (folder / name).is_file() and name not in missing]
    if not any(folder.glob("*.safetensors")):
        missing.append("model.safetensors (the weights)")
    if missing:
        raise UploadError(f"{folder} is not a complete LlavaAudio folder: missing {', '.join(missing)}. Save it with "
                          "model.save_pretrained(folder) and processor.save_pretrained(folder).")
    from huggingface_hub.utils import filter_repo_objects

    # the listing and the filter of `HfApi.upload_folder(allow_patterns=..., ignore_patterns=...)`; `push` cannot call
    # upload_folder itself, which uploads only files on disk: the model card rendered in memory joins the same commit
    listed = (path.relative_to(folder).as_posix() for path in sorted(folder.glob("**/*")) if path.is_file())
    return list(filter_repo_objects(listed, allow_patterns=list(UPLOAD_PATTERNS),
                                    ignore_patterns=list(IGNORE_PATTERNS)))


def push(folder, repo_id: str, private: bool = False, revision: str | None = None, create_pr: bool = False,
         dry_run: bool = False, token: str | None = None, eval_results: dict | None = None,
         commit_message: str = "Upload DALI captioner") -> list[str]:
    """Upload `upload_files(folder)` to the model repo `repo_id` (created if needed) in one commit; returns the
    uploaded paths (`dry_run`: only returns them). The folder is never modified: a model card (README.md) is
    rendered in memory when the folder has none or when `eval_results` are given."""
    from huggingface_hub import CommitOperationAdd

    check_repo_id(repo_id)
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
