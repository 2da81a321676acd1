"""Every stage under every shipped engine, run as a user runs it: `accelerate launch --config_file
configs/accelerate/<engine>.yaml dali-hf <stage> ...` on 2 CPU processes (gloo), the configs changed only in
`num_processes: 2`, `mixed_precision: 'no'` and `use_cpu: true`.

For each engine, one launch of `dali-hf train` runs the chain (1a prefix-tune, 1b align with OT, 2a pseudo-caption,
2b distill; 4 steps each, checkpoints at 2 and 4) and a second launch resumes each stage from the checkpoint-2 left
in its output_dir; one launch of `dali-hf align` with attentive OT, and a second resuming it from an explicit
`--resume_from_checkpoint PATH` into another folder. Each final folder holds the files of a 1-process save and loads
with nothing missing; the trained part equals the 1-process run at the same global batch (4 clips: 2 per process)
within `TOLERANCE`; the frozen parts are the starting model's, bit for bit; a resumed run ends on the uninterrupted
run's weights, bit for bit. MMD and contrastive alignment, cheaper, run once each under DDP. The engine itself is
checked in the checkpoints it writes, so a test fails if FSDP or ZeRO-3 falls back to plain data parallelism.

FSDP runs through `fsdp_on_cpu.py`, which runs the `dali-hf` command after lifting accelerate's one refusal of FSDP on
CPU processes (see there); DeepSpeed runs on its CPU accelerator (`DS_ACCELERATOR=cpu`).
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from dali_hf.testing import pairs_dataset, tiny_captioner
from dali_hf.trainers import SCORERS_NAME

ROOT = Path(__file__).parents[1]
ENGINES = ("ddp", "fsdp", "deepspeed_zero3")
LAUNCHED = ["ddp", "fsdp", pytest.param("deepspeed_zero3", marks=pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="DeepSpeed is not installed: pip install -e '.[dev]'"))]
# what only that engine writes into a checkpoint: its absence means the run fell back to another engine
ENGINE_CHECKPOINT_MARK = {"ddp": "model.safetensors", "fsdp": "pytorch_model_fsdp_0", "deepspeed_zero3": "global_step2"}
TRAINED = {"1a-prefix-tune": ("model.prefix_embeddings",),
           "1b-align": ("model.audio_tower.", "model.audio_to_vision."),
           "2b-distill": ("model.audio_multi_modal_projector.",)}
# 2 processes vs 1 at the same global batch: the same sums in another order (float32, gloo reductions)
TOLERANCE = dict(rtol=1e-4, atol=1e-5)
STEPS = ["--max_steps", "4", "--save_steps", "2", "--logging_steps", "1", "--report_to", "none", "--disable_tqdm",
         "true", "--use_cpu", "true", "--seed", "0"]
ATTENTIVE = ["--objective", "attentive_ot", "--uniform_epochs", "1", "--lambda_values", "0.05", "--lambda_final",
             "0.05"]  # uniform weights for steps 1-2, the scorers train in steps 3-4 (after the checkpoint resumed)
CAPTIONS = ["a dog barks", "a bell rings", "rain falls", "a car engine"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The starting captioner, the data (pairs that already have human captions, which distillation replaces with
    pseudo-captions), each engine's accelerate config, and the 1-process references."""
    root = tmp_path_factory.mktemp("engines")
    model, processor, _ = tiny_captioner("ast")
    model.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    pairs = pairs_dataset(8, seed=3)
    pairs.add_column("caption", [CAPTIONS[i % 4] for i in range(len(pairs))]).save_to_disk(root / "pairs")
    for engine in ENGINES:
        config = yaml.safe_load((ROOT / "configs" / "accelerate" / f"{engine}.yaml").read_text())
        config.update(num_processes=2, mixed_precision="no", use_cpu=True)
        (root / f"{engine}.yaml").write_text(yaml.safe_dump(config))
    from dali_hf.cli import main

    main(["train", "--config", str(_recipe(root, "one-process", per_device=4))])
    main(["align", "--model", str(root / "base"), "--data", str(root / "pairs"), "--output_dir",
          str(root / "one-process-attentive"), "--per_device_train_batch_size", "4", *ATTENTIVE, *STEPS])
    return root


def _recipe(root: Path, name: str, per_device: int) -> Path:
    args = {"max_steps": 4, "save_steps": 2, "logging_steps": 1, "per_device_train_batch_size": per_device,
            "use_cpu": True, "disable_tqdm": True, "report_to": "none", "seed": 0}
    recipe = {"model": str(root / "base"), "output_dir": str(root / name),
              "prefix-tune": {"data": str(root / "pairs"), "args": {**args, "warmup_steps": 0}},
              "align": {"data": str(root / "pairs"), "args": {**args, "objective": "ot"}},
              "pseudo-caption": {"batch_size": 4, "generate": {"max_new_tokens": 4}},
              "distill": {"args": args}}
    path = root / f"{name}.json"
    path.write_text(json.dumps(recipe))
    return path


def _launch(root: Path, engine: str, *argv: str) -> str:
    """`accelerate launch --config_file <engine>.yaml dali-hf *argv` on 2 CPU processes; returns its output."""
    program = ROOT / "tests" / "fsdp_on_cpu.py" if engine == "fsdp" else Path(sys.executable).parent / "dali-hf"
    with socket.socket() as free:  # a port of our own: other launches may run on this machine
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / f"{engine}.yaml"),
               "--main_process_port", str(port), str(program), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    ranks = "\n".join(line for line in done.stderr.splitlines() if line.startswith("[rank"))
    assert done.returncode == 0, (ranks or done.stderr)[-4000:]
    return done.stdout + done.stderr


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith("checkpoint-")}


def _load(folder: Path):
    from transformers import AutoModel

    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info.values()), (folder, info)  # nothing missing, unexpected or mismatched
    return dict(model.named_parameters())


def _assert_engine_ran(folder: Path, engine: str) -> None:
    written = {p.name for p in (folder / "checkpoint-2").iterdir()}
    assert ENGINE_CHECKPOINT_MARK[engine] in written, (engine, sorted(written))
    others = {mark for name, mark in ENGINE_CHECKPOINT_MARK.items() if name != engine and name != "ddp"}
    assert not others & written, (engine, sorted(written))


def _compare(folder: Path, reference: Path, start: Path, trained: tuple[str, ...]) -> float:
    """Checks `folder` against the 1-process `reference`; returns the largest difference of the trained part."""
    assert _files(folder) == _files(reference), (folder, _files(folder) ^ _files(reference))
    ours, theirs, initial = _load(folder), _load(reference), _load(start)
    largest, moved = 0.0, False
    for name, value in ours.items():
        if name.startswith(trained):
            torch.testing.assert_close(value, theirs[name], **TOLERANCE, msg=lambda m, n=name: f"{n}: {m}")
            largest = max(largest, (value - theirs[name]).abs().max().item())
            moved |= not torch.equal(value, initial[name])
        else:
            assert torch.equal(value, initial[name]), f"{folder}: frozen {name} changed"
    assert moved, f"{folder}: the trained part did not train"
    return largest


def _assert_same_weights(folder: Path, uninterrupted: Path) -> None:
    ours, theirs = _load(folder), _load(uninterrupted)
    for name, value in ours.items():
        assert torch.equal(value, theirs[name]), f"{folder}: {name} differs from the uninterrupted run's"


def _scorers(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / SCORERS_NAME)


def _keep_only_checkpoint_2(run: Path, resumed: Path) -> None:
    """`resumed`: `run` as if every stage had been killed right after its checkpoint of step 2."""
    shutil.copytree(run, resumed)
    for stage in resumed.iterdir():
        for item in stage.iterdir():
            if item.name != "checkpoint-2":
                shutil.rmtree(item) if item.is_dir() else item.unlink()


@pytest.mark.slow  # two launches of 2 processes, each running the four stages
@pytest.mark.parametrize("engine", LAUNCHED)
def test_train_chain_under_each_engine_equals_one_process_and_resumes(workspace, engine):
    run, resumed = workspace / f"{engine}-chain", workspace / f"{engine}-chain-resumed"
    _launch(workspace, engine, "train", "--config", str(_recipe(workspace, run.name, per_device=2)))
    start = workspace / "base"
    differences = {}
    for stage, trained in TRAINED.items():
        _assert_engine_ran(run / stage, engine)
        differences[stage] = _compare(run / stage, workspace / "one-process" / stage, start, trained)
        start = run / stage  # the next stage starts from this one
    print(f"{engine} chain, largest difference to 1 process: {differences}")

    _keep_only_checkpoint_2(run, resumed)
    output = _launch(workspace, engine, "train", "--config", str(_recipe(workspace, resumed.name, per_device=2)))
    for stage in TRAINED:
        assert output.count(f"resuming from {resumed / stage / 'checkpoint-2'}") == 1  # said once, not per process
        _assert_same_weights(resumed / stage, run / stage)
    # distillation learned the pseudo-captions, not the pairs' own captions
    assert "the pseudo-captions replace it" in output


@pytest.mark.slow  # two launches of 2 processes
@pytest.mark.parametrize("engine", LAUNCHED)
def test_attentive_ot_under_each_engine_equals_one_process_and_resumes_from_a_path(workspace, engine):
    run, resumed = workspace / f"{engine}-attentive", workspace / f"{engine}-attentive-resumed"
    data = ["--model", str(workspace / "base"), "--data", str(workspace / "pairs"), "--per_device_train_batch_size",
            "2", *ATTENTIVE, *STEPS]
    _launch(workspace, engine, "align", *data, "--output_dir", str(run))
    _assert_engine_ran(run, engine)
    reference = workspace / "one-process-attentive"
    difference = _compare(run, reference, workspace / "base", TRAINED["1b-align"])
    ours, theirs = _scorers(run), _scorers(reference)
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        torch.testing.assert_close(value, theirs[name], **TOLERANCE)
    print(f"{engine} attentive_ot, largest difference to 1 process: {difference}")

    output = _launch(workspace, engine, "align", *data, "--output_dir", str(resumed), "--resume_from_checkpoint",
                     str(run / "checkpoint-2"))
    assert output.count(f"resuming from {run / 'checkpoint-2'}") == 1
    _assert_same_weights(resumed, run)
    for name, value in _scorers(resumed).items():
        assert torch.equal(value, ours[name]), name


@pytest.mark.slow  # one launch of 2 processes each
@pytest.mark.parametrize("objective,one_process", [
    ("mmd", ["--per_device_train_batch_size", "4"]),
    # the contrastive negatives are the clips of the same process: 2 processes of 2 clips are one process that
    # accumulates 2 batches of 2
    ("contrastive", ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"])])
def test_the_other_objectives_under_ddp_equal_one_process(workspace, objective, one_process):
    from dali_hf.cli import main

    data = ["--model", str(workspace / "base"), "--data", str(workspace / "pairs"), "--objective", objective, *STEPS]
    reference, run = workspace / f"one-process-{objective}", workspace / f"ddp-{objective}"
    main(["align", *data, *one_process, "--output_dir", str(reference)])
    _launch(workspace, "ddp", "align", *data, "--per_device_train_batch_size", "2", "--output_dir", str(run))
    _assert_engine_ran(run, "ddp")
    difference = _compare(run, reference, workspace / "base", TRAINED["1b-align"])
    print(f"ddp {objective}, largest difference to 1 process: {difference}")
