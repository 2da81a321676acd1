"""Model cards and Hub uploads, without the network: card metadata round trip and runnable usage code, exactly
the files a user needs, a remote-code load of those files alone, and upload errors that leave the folder as it was."""

import hashlib
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from dali_hf.hub import REQUIRED, UPLOAD_PATTERNS, UploadError, push, upload_files, write_model_card
from dali_hf.testing import run_without_dali_hf, saved_captioner

EVAL = {"AudioCaps": {"scores": {"meteor": 0.123, "rouge_l": 0.331, "cider_d": 0.281}, "split": "test",
                      "dataset_id": "org/audiocaps"},
        "Clotho": {"scores": {"meteor": 0.094, "spider": 0.097}, "split": "evaluation"}}

NEEDED = ["README.md", "auto_classes.py", "chat_template.jinja", "config.json", "configuration_cav_mae.py",
          "configuration_llava_audio.py", "feature_extraction_cav_mae.py", "generation_config.json", "media.py",
          "model.safetensors", "modeling_cav_mae.py", "modeling_llava_audio.py", "pipeline_audio_captioning.py",
          "processing_llava_audio.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
          "vocabulary.py"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, llava_parts):
    path = saved_captioner(llava_parts, "whisper", tmp_path_factory.mktemp("hub") / "dali-tiny")
    write_model_card(path, repo_id="org/dali-tiny")
    # what training leaves behind that must not be uploaded
    (path / "checkpoint-2").mkdir()
    (path / "checkpoint-2" / "model.safetensors").write_bytes(b"x")
    (path / "training_args.bin").write_bytes(b"pickle")
    (path / "stage_complete.json").write_text("{}")
    (path / "runs").mkdir()
    (path / "runs" / "events.out").write_text("log")
    return path


def _digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_card_metadata_round_trip(folder, tmp_path):
    copy = tmp_path / "dali-tiny"
    shutil.copytree(folder, copy)
    write_model_card(copy, repo_id="org/dali-tiny", eval_results=EVAL, datasets=["org/audioset-pairs"])
    card = ModelCard.load(copy / "README.md")
    assert card.data.pipeline_tag == "audio-text-to-text" and "audio-captioning" in card.data.tags
    assert card.data.library_name == "transformers"
    parsed = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    expected = {(d, m): round(100 * v, 2) for d, e in EVAL.items() for m, v in e["scores"].items()}
    assert parsed == expected
    assert (copy / ".eval_results" / "audiocaps.yaml").read_text().count("org/audiocaps") == 3
    assert not (copy / ".eval_results" / "clotho.yaml").exists()  # no Hub dataset id, model-index only
    assert "| AudioCaps (test) |" in card.text and "12.3" in card.text


@pytest.mark.slow  # a fresh Python
def test_card_usage_code_runs_against_the_saved_model(folder, tmp_path):
    text = (folder / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace('"org/dali-tiny"', repr(str(folder)))
    script = tmp_path / "usage.py"
    script.write_text(code.replace("max_new_tokens=32", "max_new_tokens=3"))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[{'caption':" in result.stdout


def test_dry_run_lists_exactly_what_is_needed(folder, capsys):
    from dali_hf.cli import main

    before = _digest(folder)
    main(["push", str(folder), "--repo-id", "org/dali-tiny", "--dry-run"])
    assert capsys.readouterr().out.split() == NEEDED
    assert upload_files(folder) == NEEDED
    assert _digest(folder) == before



def test_only_the_named_files_of_the_top_level_and_eval_results_are_uploaded(tmp_path):
    top_level = [pattern.replace("*", "x") for pattern in UPLOAD_PATTERNS if "/" not in pattern]
    wanted = [*top_level, *REQUIRED, "model.safetensors", ".eval_results/audiocaps.yaml"]
    # the same names where training, logging or git put them, and files no pattern names
    unwanted = [f"{folder}/{name}" for folder in ("checkpoint-2", "runs/deep", ".git", ".eval_results", "code.py")
                for name in top_level]
    unwanted += [".eval_results/old/audiocaps.yaml", "checkpoint-2/.eval_results/audiocaps.yaml", "audiocaps.yaml",
                 ".eval_results/notes.txt", "training_args.bin", "stage_complete.json", "optimizer.pt", "x.pyc",
                 "README.md.bak", "Config.json"]
    for name in wanted + unwanted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    files = upload_files(tmp_path)
    assert set(files) == set(wanted) and len(files) == len(set(wanted))


def test_push_commits_the_files_and_the_card_in_one_commit(folder, monkeypatch):
    from huggingface_hub import HfApi

    before = _digest(folder)
    commits = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: repo_id)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kwargs: commits.append(operations))
    assert push(folder, "org/dali-tiny", token="hf_test", eval_results=EVAL) == sorted(
        NEEDED + [".eval_results/audiocaps.yaml"])
    (operations,) = commits
    sources = {op.path_in_repo: op.path_or_fileobj for op in operations}
    assert sorted(sources) == sorted(NEEDED + [".eval_results/audiocaps.yaml"])
    assert all(sources[name] == str(folder / name) for name in NEEDED if name != "README.md")
    card = sources["README.md"]  # rendered in memory with the results, the folder's own card left as it was
    assert isinstance(card, bytes) and b"| AudioCaps (test) |" in card and card != (folder / "README.md").read_bytes()
    assert b"org/audiocaps" in sources[".eval_results/audiocaps.yaml"]
    assert _digest(folder) == before


@pytest.mark.parametrize("repo_id", ["a/b/c", "not a/repo id", "-org/name", "org/name-", "org/na--me", "org/na..me",
                                     "org/name.git", "org/" + "x" * 97, "org/café", "", "./name"])
def test_a_malformed_repo_id_is_refused_before_anything(folder, repo_id):
    with pytest.raises(UploadError, match=f"^{re.escape(repr(repo_id))} is not a Hub repo id: use org/name or name"):
        push(folder, repo_id, dry_run=True)


@pytest.mark.parametrize("repo_id", ["org/dali-tiny", "dali_tiny", "Org_1/Foo-BAR_foo.bar123", "x" * 96])
def test_a_well_formed_repo_id_is_accepted(folder, repo_id):
    assert push(folder, repo_id, dry_run=True) == NEEDED

REMOTE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from transformers import AutoModel, AutoProcessor, pipeline
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
    captioner = pipeline(model=sys.argv[1], trust_remote_code=True)
    clip = (0.3 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    print(type(model).__name__, type(processor).__name__, captioner(clip, sampling_rate=16000, max_new_tokens=2))
    """
)


@pytest.mark.slow  # a fresh Python without dali_hf
def test_the_uploaded_files_alone_load_through_remote_code(folder, tmp_path):
    upload = tmp_path / "as-uploaded"
    for name in upload_files(folder):
        (upload / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, upload / name)
    result = run_without_dali_hf(REMOTE, upload, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("LlavaAudioForConditionalGeneration LlavaAudioProcessor [{'caption':")


def test_incomplete_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UploadError, match="not a complete LlavaAudio folder: missing processor_config.json"):
        upload_files(tmp_path)


def test_a_module_the_folders_code_imports_is_required(folder, tmp_path):
    """Each module that the folder's code imports (at any depth) is needed for trust_remote_code: a folder without
    one is refused, naming it; the REQUIRED entry modules alone would not notice."""
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    upload_files(copy)
    (copy / "vocabulary.py").unlink()  # imported by configuration_llava_audio.py and processing_llava_audio.py
    (copy / "media.py").unlink()  # imported by processing_llava_audio.py
    with pytest.raises(UploadError, match="not a complete LlavaAudio folder: missing ") as error:
        upload_files(copy)
    listed = str(error.value).split("missing ")[1].split(". Save it with")[0]
    assert sorted(listed.split(", ")) == ["media.py", "vocabulary.py"]


def test_upload_errors_are_clear_and_leave_the_folder_untouched(folder, monkeypatch):
    import httpx2
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import RepositoryNotFoundError

    before = _digest(folder)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(UploadError, match="no Hugging Face token"):
        push(folder, "org/dali-tiny")

    def not_found(self, *args, **kwargs):
        response = httpx2.Response(404, request=httpx2.Request("POST", "https://hub.invalid/api/repos/create"))
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr(HfApi, "create_repo", not_found)
    with pytest.raises(UploadError, match="repository org/missing not found"):
        push(folder, "org/missing", token="hf_test")
    monkeypatch.undo()

    # the network is down: a closed port on this machine
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(UploadError, match="cannot reach the Hub"):
        push(folder, "org/dali-tiny", token="hf_test", eval_results=EVAL)
    assert _digest(folder) == before
