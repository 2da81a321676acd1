"""Bad input to the `dali-hf` command and the functions behind it: one line naming the input and the fix, exit 1, no
traceback; what loads a model registers it first; Ctrl-C says what was written and how to go on.

The messages are checked in-process (fast); the command itself runs as the installed entry point in a few fresh
processes (slow), most of which stop before torch is imported.
"""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image
from safetensors.torch import save_file

from dali_hf import cli, recipe
from dali_hf.evaluation import BenchmarkFileError, read_audiocaps, read_clotho
from dali_hf.hub import UploadError, upload_files
from dali_hf.model_folder import ModelFolderError, check_model_folder
from dali_hf.modeling.media import AudioInputError, AudioSource, frame_at
from dali_hf.testing import pairs_dataset, saved_captioner

DALI_HF = str(Path(sys.executable).with_name("dali-hf"))
RATE = 16000
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def run_cli(*args, cwd=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([DALI_HF, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


def tone(seconds=0.5):
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


# ---- bad --model folders, made by hand: each file of a saved captioner, and each way to get one wrong -------------

PROCESSOR_FILES = ("processor_config.json", "tokenizer_config.json", "tokenizer.json")


def captioner_like(folder: Path, model_type="llava_audio", processor=True) -> Path:
    """A folder with the files a saved captioner has (tiny weights): what `check_model_folder` reads."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    save_file({"weight": torch.arange(64, dtype=torch.float32)}, folder / "model.safetensors")
    for name in PROCESSOR_FILES if processor else ():
        (folder / name).write_text("{}")
    return folder


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory):
    """{case: (--model value, the message's expected part)}, in one folder."""
    root = tmp_path_factory.mktemp("bad-models")
    captioner_like(root / "no-processor", processor=False)
    captioner_like(root / "llava", model_type="llava")
    (root / "empty").mkdir()
    (root / "adapter").mkdir()
    (root / "adapter" / "adapter_config.json").write_text("{}")
    whole = captioner_like(root / "truncated") / "model.safetensors"
    data = whole.read_bytes()
    whole.write_bytes(data[: len(data) - 100])
    soundfile.write(root / "clip.wav", tone(), RATE)
    return root, {
        "no-processor": ("no-processor", "lacks the processor's files (processor_config.json, tokenizer_config.json, "
                                         "tokenizer.json): save the processor into it with processor.save_pretrained"),
        "llava": ("llava", "is a plain LLaVA (model_type 'llava'), not a LlavaAudio captioner: build one from it with "
                           "LlavaAudioForConditionalGeneration.from_llava"),
        "empty": ("empty", "is an empty folder: not a saved model; pass the folder a captioner was saved to"),
        "truncated": ("truncated", f"model.safetensors is truncated ({len(data) - 100} bytes of the {len(data)} its "
                                   "header announces): copy, download or save it again"),
        "adapter": ("adapter", "is a PEFT adapter, not a whole captioner: merge it into its base"),
        "missing": ("./not-here", "./not-here: no such folder: pass the folder of a saved LlavaAudio captioner"),
        "wav": ("clip.wav", "clip.wav is a file, not a model folder"),
        "offline hub id": ("org/not-here", "org/not-here: no such folder, and as a Hub id: not in the local Hub cache, "
                                           "and HF_HUB_OFFLINE is set"),
    }


def test_bad_model_folders_are_named_with_the_fix(bad_models, monkeypatch):
    root, cases = bad_models
    monkeypatch.chdir(root)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for case, (model, message) in cases.items():
        with pytest.raises(ModelFolderError) as error:
            check_model_folder(model)
        assert message in str(error.value), case
        assert str(error.value).startswith(f"--model {model}") and "\n" not in str(error.value), case
    check_model_folder(captioner_like(root / "whole"))  # the same files, whole: passes


def test_a_sharded_checkpoint_needs_every_shard(tmp_path):
    folder = captioner_like(tmp_path / "sharded")
    os.replace(folder / "model.safetensors", folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelFolderError, match="lacks weight file.s. model-00002-of-00002.safetensors named in its "
                                               "model.safetensors.index.json"):
        check_model_folder(folder)


# ---- train: the recipe file and its sections, checked before anything trains ------------------------------------

def test_broken_recipe_files_say_where(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: m\noutput_dir: out\nprefix-tune: {data: x\nalign: {data: y}\n")
    with pytest.raises(SystemExit, match=r"bad.yaml is not valid YAML: .* at line \d+, column \d+$"):
        cli.main(["train", "--config", str(tmp_path / "bad.yaml")])
    (tmp_path / "bad.json").write_text('{"model": "m",\n "output_dir": }')
    with pytest.raises(SystemExit, match=r"bad.json is not valid JSON: Expecting value at line 2, column 16$"):
        cli.main(["train", "--config", str(tmp_path / "bad.json")])


def test_recipe_sections_are_checked_against_the_stages(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    base = {"model": "m", "output_dir": "o", "prefix-tune": {"data": str(data)}, "align": {"data": str(data)}}
    with pytest.raises(ValueError, match=r"prefix-tune.args.num_train_epoch is not a PrefixTuningConfig field \(did "
                                         r"you mean 'num_train_epochs'\?\)"):
        recipe.check_recipe({**base, "prefix-tune": {"data": str(data), "args": {"num_train_epoch": 3}}})
    with pytest.raises(ValueError, match=r"distill.args.lambda_fnal is not a DistillationConfig field"):
        recipe.check_recipe({**base, "distill": {"args": {"lambda_fnal": 1}}})
    with pytest.raises(ValueError, match=r"align.data .*missing: no such folder: data is a folder written by "
                                         "datasets' Dataset.save_to_disk"):
        recipe.check_recipe({**base, "align": {"data": str(tmp_path / "missing")}})
    with pytest.raises(ValueError, match=r"unknown key pseudo-caption.batchsize \(did you mean 'batch_size'\?\)"):
        recipe.check_recipe({**base, "pseudo-caption": {"batchsize": 4}})
    with pytest.raises(ValueError, match=r"section 'distill' is a mapping of args, got nothing \(leave the section "
                                         r"out, or write \{\}\)"):
        recipe.check_recipe({**base, "distill": None})  # YAML's "distill:" alone
    recipe.check_recipe({**base, "align": {"data": str(data), "args": {"objective": "ot", "num_train_epochs": 2}},
                         "pseudo-caption": {"batch_size": 2, "generate": {}}, "distill": {"args": {}}})


# ---- convert-official, evaluate --format, push, help: argument errors before any model -------------------------

def test_convert_official_names_a_missing_file(tmp_path):
    (tmp_path / "audio_backbone.pth").write_bytes(b"")
    with pytest.raises(SystemExit, match=r"^error: --projector .*prefixMLP.bin: no such file$"):
        cli.main(["convert-official", "--audio-backbone", str(tmp_path / "audio_backbone.pth"), "--projector",
                  str(tmp_path / "prefixMLP.bin"), "--output-dir", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"^error: --audio-backbone .*: a folder, not the file"):
        cli.main(["convert-official", "--audio-backbone", str(tmp_path), "--output-dir", str(tmp_path / "out")])


def test_benchmark_csv_in_the_other_format_says_which(tmp_path):
    clotho = tmp_path / "clotho.csv"
    clotho.write_text("file_name,caption_1\na.wav,a dog barks\n")
    with pytest.raises(BenchmarkFileError, match=r"missing column\(s\) audiocap_id, youtube_id, start_time, caption "
                                                 r"\(its columns: file_name, caption_1\): it looks like a clotho csv: "
                                                 r"pass --format clotho"):
        read_audiocaps(str(clotho), str(tmp_path))
    audiocaps = tmp_path / "audiocaps.csv"
    audiocaps.write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,0,a dog\n")
    with pytest.raises(BenchmarkFileError, match="it looks like a audiocaps csv: pass --format audiocaps"):
        read_clotho(str(audiocaps), str(tmp_path))


def test_command_errors_after_the_model_check_are_one_line(tmp_path):
    """What `main` reports once --model passed its check: a benchmark csv in the other format (read before the
    model loads), audio files given to --mode audiovisual (found before it loads)."""
    model = captioner_like(tmp_path / "model")
    (tmp_path / "clotho.csv").write_text("file_name,caption_1\nclip.wav,a tone\n")
    with pytest.raises(SystemExit, match=r"^error: .*clotho.csv: missing column\(s\) audiocap_id, youtube_id, "
                                         r"start_time, caption \(its columns: file_name, caption_1\): it looks like "
                                         r"a clotho csv: pass --format clotho \(or leave --format out\)$"):
        cli.main(["evaluate", "--model", str(model), "--data", str(tmp_path / "clotho.csv"), "--format", "audiocaps",
                  "--audio-dir", str(tmp_path), "--output-dir", str(tmp_path / "eval")])
    assert not (tmp_path / "eval").exists()
    common = ["evaluate", "--model", str(model), "--output-dir", str(tmp_path / "eval")]
    for args, message in [
        (["--data", str(tmp_path / "clotho.csv"), "--format", "hf"], "clotho.csv is a file, and --format hf reads a "
                                                                     "folder written by datasets' Dataset.save_to_disk"),
        (["--data", str(tmp_path), "--format", "clotho", "--audio-dir", str(tmp_path)], "is a folder, and --format "
                                                                                        "clotho reads a csv file"),
        (["--data", str(tmp_path / "clotho.csv"), "--audio-dir", str(tmp_path / "audio")], "audio: no such folder"),
    ]:
        with pytest.raises(SystemExit, match=re.escape(message)):
            cli.main([*common, *args])
    soundfile.write(tmp_path / "clip.wav", tone(), RATE)
    with pytest.raises(SystemExit, match=r"^error: --mode audiovisual captions videos \(their sound and a frame\), "
                                         r"and .*clip.wav is not a video: caption audio files with --mode audio$"):
        cli.main(["caption", str(tmp_path / "clip.wav"), "--mode", "audiovisual", "--model", str(model)])


def test_training_stages_name_a_data_folder_that_is_no_saved_dataset(tmp_path):
    """--data, --eval-data and --captions of the training stages: a missing folder, a file, a folder without a saved
    dataset are one-line errors naming the option and what to pass, after the model check and before anything
    loads; nothing is written."""
    model = captioner_like(tmp_path / "model")
    rows = tmp_path / "rows"
    pairs_dataset(2).save_to_disk(rows)
    (tmp_path / "notes.txt").write_text("x")
    saved = "pass a folder written by datasets' Dataset.save_to_disk"
    cases = [
        (["prefix-tune", "--data", tmp_path / "nothere"], f"--data {tmp_path / 'nothere'}: no such folder: {saved}"),
        (["align", "--data", tmp_path / "notes.txt"], f"--data {tmp_path / 'notes.txt'}: a file, not a folder: {saved}"),
        (["align", "--data", rows, "--eval-data", tmp_path],
         f"--eval-data {tmp_path}: no saved dataset in it (no dataset_info.json): {saved}"),
        (["distill", "--data", rows, "--captions", tmp_path],
         f"--captions {tmp_path}: no saved dataset in its dataset/: pass the --output-dir of `dali-hf pseudo-caption`"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit, match=f"^error: {re.escape(message)}$"):
            cli.main([*map(str, args), "--model", str(model), "--output_dir", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    pairs_dataset(2).save_to_disk(tmp_path / "captions" / "dataset")  # what pseudo-caption writes: accepted
    assert cli._check_saved_dataset("--captions", str(tmp_path / "captions"), inside="dataset") is None
    assert cli._check_saved_dataset("--data", str(rows)) is None


def test_push_of_a_missing_folder_says_so(tmp_path):
    with pytest.raises(UploadError, match=r"nothere: no such folder: pass the folder a LlavaAudio captioner was "):
        upload_files(tmp_path / "nothere")
    (tmp_path / "file").write_text("")
    with pytest.raises(UploadError, match="a file, not a model folder"):
        upload_files(tmp_path / "file")


def test_help_says_each_default_once(capsys):
    for stage in cli.TRAINING_STAGES:  # their parsers join the stage's TrainingArguments fields
        with pytest.raises(SystemExit):
            cli.main([stage, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and not re.search(r"\(default[^)]*\) \(default:", text), stage
        assert re.search(r"--seed SEED .*\(default: 42\)", text), stage
    parser = cli.build_parser()
    actions = parser._subparsers._group_actions[0].choices
    for name in ("caption", "evaluate", "pseudo-caption", "push", "train"):
        text = " ".join(actions[name].format_help().split())
        assert "(default: None)" not in text and not re.search(r"\(default[^)]*\) \(default:", text), name
    caption = " ".join(actions["caption"].format_help().split())
    assert "window for long audio (default: the encoder's input length) --stride-length-s" in caption
    assert "overlap of consecutive windows, in seconds (default: 0.0)" in caption


# ---- media messages -------------------------------------------------------------------------------------------

def test_media_messages_say_what_the_input_is(tmp_path, caplog):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioInputError, match=r"empty.wav is empty \(0 bytes\): no audio to decode"):
        AudioSource(tmp_path / "empty.wav")
    Image.new("RGB", (8, 8), "red").save(tmp_path / "picture.png")
    os.replace(tmp_path / "picture.png", tmp_path / "picture.wav")
    with pytest.raises(AudioInputError, match=r"picture.wav: it is an image \(PNG\), not audio"):
        AudioSource(tmp_path / "picture.wav")
    clip = tone(1.0)
    clip[12345] = np.inf
    with pytest.raises(AudioInputError, match=r"the first is sample 12345, at 0.772 s"):
        AudioSource(clip, sampling_rate=RATE).read(0.5, 1.0)
    with caplog.at_level(logging.WARNING):
        AudioSource(clip, sampling_rate=100)
    assert "sampling_rate=100 Hz is below 4000 Hz" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        AudioSource(clip, sampling_rate=8000)
    assert "below" not in caplog.text


@needs_ffmpeg
def test_a_frame_past_the_end_is_the_last_one_with_a_warning(tmp_path, caplog):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=duration=3:size=64x48:rate=10", "-pix_fmt", "yuv420p", str(tmp_path / "v.mp4")], check=True)
    with caplog.at_level(logging.WARNING):
        late = frame_at(tmp_path / "v.mp4", 99)
    assert "frame at 99 s is past the end of" in caplog.text and "(3.00 s): its last frame is used" in caplog.text
    assert np.array_equal(np.asarray(late), np.asarray(frame_at(tmp_path / "v.mp4", 2.999)))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        frame_at(tmp_path / "v.mp4", 2.5)
    assert "past the end" not in caplog.text


# ---- the command, in fresh processes ---------------------------------------------------------------------------

@pytest.mark.slow
def test_the_command_reports_bad_input_in_one_line(bad_models, tmp_path):
    """Each bad --model, for each command that takes one, and the other argument errors: exit 1, one line, no
    traceback, before torch is imported (so each answer takes well under a second)."""
    root, cases = bad_models
    commands = {"caption": ["caption", "clip.wav", "--output", tmp_path / "c.jsonl"],
                "pseudo-caption": ["pseudo-caption", "--data", ".", "--output-dir", tmp_path / "p"],
                "evaluate": ["evaluate", "--data", "clip.wav", "--format", "clotho", "--audio-dir", ".",
                             "--output-dir", tmp_path / "e"]}
    for case, (model, message) in cases.items():
        for command, args in commands.items() if case == "llava" else [("caption", commands["caption"])]:
            result = run_cli(*args, "--model", model, cwd=root)
            assert result.returncode == 1, (case, command, result.stderr[-2000:])
            assert result.stderr.startswith(f"error: --model {model}"), (case, command, result.stderr)
            assert message in result.stderr and result.stderr.count("\n") == 1, (case, command, result.stderr)
    (tmp_path / "r.yaml").write_text("model: m\noutput_dir: o\nprefix-tune: {data: [x\nalign: {}\n")
    whole = captioner_like(tmp_path / "whole")
    checks = {
        ("train", "--config", tmp_path / "r.yaml"): "is not valid YAML: ",
        ("push", "nothere", "--repo-id", "org/name", "--dry-run"):
            "error: nothere: no such folder: pass the folder of a saved LlavaAudio captioner\n",
        ("push", "truncated", "--repo-id", "org/name", "--dry-run"): "error: truncated: model.safetensors is truncated",
        ("convert-official", "--audio-backbone", "audio_backbone.pth", "--output-dir", tmp_path / "c"):
            "error: --audio-backbone audio_backbone.pth: no such file",
        ("pseudo-caption", "--model", whole, "--data", "nothere", "--output-dir", tmp_path / "p"):
            "error: --data nothere: no such folder: pass a folder written by datasets' Dataset.save_to_disk",
    }
    for args, message in checks.items():
        result = run_cli(*args, cwd=root)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr


@pytest.mark.slow
def test_train_names_the_nearest_training_argument(tmp_path):
    data = tmp_path / "pairs"
    data.mkdir()
    model = captioner_like(tmp_path / "model")
    (tmp_path / "recipe.yaml").write_text(f"model: {model}\noutput_dir: {tmp_path / 'out'}\nprefix-tune: {{data: "
                                          f"{data}, args: {{num_train_epoch: 3}}}}\nalign: {{data: {data}}}\n")
    result = run_cli("train", "--config", tmp_path / "recipe.yaml")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr == (f"error: {tmp_path / 'recipe.yaml'}: prefix-tune.args.num_train_epoch is not a "
                             "PrefixTuningConfig field (did you mean 'num_train_epochs'?) (the fields are "
                             "TrainingArguments' and the stage's own)\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_pseudo_caption_registers_what_it_loads(llava_parts, tmp_path):
    """`dali-hf pseudo-caption` loads the saved captioner without trust_remote_code, and equals the library call."""
    import datasets
    from transformers import AutoModel, AutoProcessor

    from dali_hf.trainers import generate_pseudo_captions

    folder = saved_captioner(llava_parts, "whisper", tmp_path / "captioner")
    pairs = pairs_dataset(3)
    pairs.save_to_disk(tmp_path / "pairs")
    result = run_cli("pseudo-caption", "--model", folder, "--data", tmp_path / "pairs", "--output-dir",
                     tmp_path / "out", "--max-new-tokens", 3, "--batch-size", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"3 pseudo-captions in {tmp_path / 'out'}" in result.stdout
    expected = generate_pseudo_captions(AutoModel.from_pretrained(folder), AutoProcessor.from_pretrained(folder),
                                        pairs, tmp_path / "library", batch_size=2, max_new_tokens=3)
    assert datasets.load_from_disk(tmp_path / "out" / "dataset")[:] == expected[:]


@pytest.mark.slow
def test_ctrl_c_says_what_was_written_and_how_to_go_on(llava_parts, tmp_path):
    """`dali-hf train` interrupted once its first checkpoint is written (so it registered and loaded the model): no
    traceback, exit 130, the folder and how to resume."""
    folder = saved_captioner(llava_parts, "ast", tmp_path / "captioner")
    pairs = pairs_dataset(4)
    pairs.add_column("caption", ["a tone"] * 4).save_to_disk(tmp_path / "captioned")
    quick = {"max_steps": 10000, "save_steps": 1, "per_device_train_batch_size": 2, "use_cpu": True,
             "report_to": [], "disable_tqdm": True, "dataloader_num_workers": 0}
    out = tmp_path / "run"
    (tmp_path / "recipe.json").write_text(json.dumps({
        "model": str(folder), "output_dir": str(out), "prefix-tune": {"data": str(tmp_path / "captioned"),
                                                                      "args": quick},
        "align": {"data": str(tmp_path / "captioned")}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen([DALI_HF, "train", "--config", str(tmp_path / "recipe.json")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()
    checkpoint = out / "1a-prefix-tune" / "checkpoint-1"
    deadline = time.monotonic() + 180
    while not checkpoint.is_dir() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert process.poll() is None, "".join(stderr)[-3000:]
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    reader.join(timeout=10)
    text = "".join(stderr)
    assert process.returncode == 130, text[-3000:]
    assert "Traceback" not in text
    assert text.rstrip().endswith(f"interrupted: finished stages and the interrupted stage's checkpoints are in {out}; "
                                  "run the same command again: finished stages are skipped and the interrupted one "
                                  "resumes")
