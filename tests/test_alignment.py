"""DistributionAlignmentTrainer on tiny models: each objective learns, scorer gradients, exact resume."""

import itertools

import numpy as np
import pytest
import torch

from dali_hf.testing import StopAfterStep, pairs_dataset, tiny_captioner
from dali_hf.trainers import SCORERS_NAME
from dali_hf.trainers.objectives import entropy, ot_loss


@pytest.fixture(scope="module")
def data():
    return pairs_dataset()


# `pytest -m "not slow"` runs two objectives, `make test` all five
@pytest.mark.parametrize("objective,solver", [
    pytest.param("contrastive", "exact", marks=pytest.mark.slow),
    pytest.param("mmd", "exact", marks=pytest.mark.slow),
    pytest.param("ot", "exact", marks=pytest.mark.slow),
    ("ot", "sinkhorn"),
    ("attentive_ot", "exact"),
])
def test_each_objective_lowers_its_loss(make_trainer, data, tmp_path, objective, solver):
    trainer = make_trainer(data, tmp_path, objective=objective, solver=solver)
    captioner = trainer.model.captioner  # the whole captioner given, aligned through its shared parts
    frozen = {n: p.clone() for n, p in captioner.named_parameters() if "audio" not in n}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]), losses
    for name, param in captioner.named_parameters():  # LLaVA untouched, language model included
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    if objective == "attentive_ot":
        logged = [log for log in trainer.state.log_history if "entropy_audio" in log]
        assert logged and all(log["lambda"] == 0.05 for log in logged)
        assert (tmp_path / SCORERS_NAME).exists() is False  # written by save_model only
        trainer.save_model()
        assert (tmp_path / SCORERS_NAME).exists()


def test_scorers_get_gradient_only_from_their_objective(make_trainer, data, tmp_path):
    trainer = make_trainer(data, tmp_path, objective="attentive_ot", uniform_epochs=0,
                           lambda_values=[0.5])
    model = trainer.model
    batch = trainer.data_collator([data[i] for i in range(4)])
    loss = trainer.compute_loss(model.train(), batch)
    loss.backward()
    encoder_grad = model.model.audio_to_vision.weight.grad.clone()
    scorer_grads = [p.grad.clone() for p in trainer.scorers.parameters()]
    model.zero_grad()
    trainer.scorers.zero_grad()

    audio = model(input_features=batch["input_features"]).audio_tokens
    image = model.get_image_tokens(batch["pixel_values"])
    alpha, beta = trainer.scorers(audio.detach(), image)
    # the encoder: OT with the weights as constants
    ot_loss(audio, image, alpha.detach(), beta.detach()).mean().backward()
    assert torch.allclose(model.model.audio_to_vision.weight.grad, encoder_grad, atol=1e-6)
    assert all(p.grad is None for p in trainer.scorers.parameters())
    # the scorers: OT - lambda H with the audio tokens as constants
    scorer_objective = ot_loss(audio.detach(), image, alpha, beta).mean() - 0.5 * (entropy(alpha) + entropy(beta)).mean()
    scorer_objective.backward()
    for expected, got in zip(scorer_grads, trainer.scorers.parameters(), strict=True):
        assert torch.allclose(got.grad, expected, atol=1e-6)


def test_scorers_step_on_unscaled_gradients_and_skip_an_overflow(make_trainer, data, tmp_path):
    """Under fp16 the Trainer's backward scales the loss (accelerate's GradScaler), so the scorers' gradients are
    scaled too: the scorers must step on the unscaled gradients, and skip a step whose gradients overflowed, as the
    audio side does. A CPU GradScaler stands in for the GPU one; one real optimiser step of the Trainer each (no
    clipping: under fp16 accelerate unscales before it clips, which a scaler set by hand does not switch on)."""

    def scorers_before_and_after_one_step(scaler, uniform_epochs=0):
        trainer = make_trainer(data, tmp_path, objective="attentive_ot", uniform_epochs=uniform_epochs,
                               lambda_values=[0.5], max_steps=1, max_grad_norm=0.0)
        start = [p.detach().clone() for p in trainer.scorers.parameters()]
        trainer.accelerator.scaler = scaler
        trainer.train()
        return start, [p.detach().clone() for p in trainer.scorers.parameters()]

    start, plain = scorers_before_and_after_one_step(None)
    assert not all(torch.equal(a, b) for a, b in zip(plain, start, strict=True))
    start_scaled, scaled = scorers_before_and_after_one_step(torch.amp.GradScaler("cpu", init_scale=2.0**12))
    for a, b in zip(start, start_scaled, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(plain, scaled, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
    start, overflowed = scorers_before_and_after_one_step(torch.amp.GradScaler("cpu", init_scale=float("inf")))
    for a, b in zip(start, overflowed, strict=True):
        assert torch.equal(a, b)
    # the scorers idle (a uniform epoch): no gradient, no step (and no error from the scaler)
    start, idle = scorers_before_and_after_one_step(torch.amp.GradScaler("cpu", init_scale=2.0**12), uniform_epochs=1)
    for a, b in zip(start, idle, strict=True):
        assert torch.equal(a, b)


def test_overlapped_chunks_give_the_same_loss_and_gradients(make_trainer, data, tmp_path):
    trainer = make_trainer(data, tmp_path, objective="attentive_ot", uniform_epochs=0,
                           lambda_values=[0.5])
    model = trainer.model.train()
    batch = trainer.data_collator([data[i] for i in range(5)])  # 5 clips in 3 chunks: 2, 2, 1

    def loss_and_grads(chunks):
        trainer.args.ot_overlap_chunks = chunks
        model.zero_grad()
        trainer.scorers.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        trained = [p for p in list(model.parameters()) + list(trainer.scorers.parameters()) if p.grad is not None]
        return loss.detach(), [p.grad.clone() for p in trained]

    whole, whole_grads = loss_and_grads(1)
    assert len(trainer._chunks(batch)) == 1
    trainer.args.ot_overlap_chunks = 3
    assert [len(c["input_features"]) for c in trainer._chunks(batch)] == [2, 2, 1]
    chunked, chunked_grads = loss_and_grads(3)
    assert torch.allclose(whole, chunked, atol=1e-6)
    assert len(whole_grads) == len(chunked_grads) > 0
    for a, b in zip(whole_grads, chunked_grads, strict=True):  # float32 sums in another order
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5 * max(a.abs().max().item(), 1.0))


def test_resume_equals_uninterrupted_run(make_trainer, data, tmp_path):
    """Attentive OT with the feature augmentation: the scorers resume with the Trainer's checkpoint (weights and
    their optimiser state), and the augmentation draws what the uninterrupted run draws."""
    settings = dict(objective="attentive_ot", num_train_epochs=2, save_strategy="steps", save_steps=4, augment=True)
    full = make_trainer(data, tmp_path / "full", **settings)
    full.train()
    interrupted = make_trainer(data, tmp_path / "part", **settings)
    interrupted.add_callback(StopAfterStep(4))  # as if killed right after the checkpoint of step 4
    interrupted.train()
    assert interrupted.state.global_step == 4
    resumed = make_trainer(data, tmp_path / "part", **settings)
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-4"))

    def losses(trainer):
        return [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]

    assert losses(resumed)[-4:] == losses(full)[-4:]
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(full.scorers.parameters(), resumed.scorers.parameters(), strict=True):
        assert torch.equal(a, b)


def test_evaluation_uses_uniform_weights(make_trainer, data, tmp_path):
    trainer = make_trainer(data, tmp_path, objective="attentive_ot", uniform_epochs=0)
    trainer.eval_dataset = data.select(range(8))
    metrics = trainer.evaluate()
    batch = trainer.data_collator([data[i] for i in range(8)])
    with torch.no_grad():
        audio = trainer.model(input_features=batch["input_features"]).audio_tokens
        image = trainer.model.get_image_tokens(batch["pixel_values"])
    assert abs(metrics["eval_loss"] - ot_loss(audio, image).mean().item()) < 1e-4


@pytest.mark.parametrize("stream", [False, True])
def test_align_cli_trains_and_writes_a_loadable_folder(data, tmp_path, stream):
    from transformers import AutoModel

    from dali_hf.cli import main

    model, processor, _ = tiny_captioner("ast")
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    data.save_to_disk(tmp_path / "pairs")
    out = tmp_path / "aligned"
    main(["align", "--model", str(tmp_path / "start"), "--data", str(tmp_path / "pairs"), "--objective", "mmd",
          "--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_steps", "2", "--use_cpu", "true",
          "--report_to", "none", "--save_strategy", "no", "--learning_rate", "0.01", *(["--stream"] if stream else [])])
    assert (out / "token_distributions.png").stat().st_size > 10_000
    aligned = AutoModel.from_pretrained(out)
    before = model.model.audio_to_vision.weight
    assert not torch.equal(aligned.model.audio_to_vision.weight, before)
    assert torch.equal(aligned.model.language_model.embed_tokens.weight, model.model.language_model.embed_tokens.weight)


@pytest.mark.slow  # two accelerate launches of a fresh Python each
@pytest.mark.parametrize("objective,data,config,resume", [
    ("ot", "map", "ddp", False), ("attentive_ot", "map", "ddp", True), ("attentive_ot", "stream", "ddp", False),
    ("ot", "stream", "fsdp", False), ("attentive_ot", "map", "deepspeed_zero3", True)])
def test_two_processes_give_the_loss_curve_of_one(tmp_path, objective, data, config, resume):
    """The shipped accelerate configs, unchanged but for the process count and precision: without a GPU, DDP and
    FSDP2 run over CPU processes (gloo; FSDP2 through fsdp_on_cpu, and ddp_align.py checks that it is FSDP),
    DeepSpeed over its CPU accelerator. The trainer loads the captioner folder
    without its language model; the folders it saves are complete captioners with the scorers beside them, and a
    run resumed from its checkpoint of step 4 ends where the uninterrupted one does."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoModel

    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (pip install deepspeed)")
    script = str(Path(__file__).parent / "ddp_align.py")
    model, processor, _ = tiny_captioner("ast")
    model.save_pretrained(tmp_path / "captioner")
    processor.save_pretrained(tmp_path / "captioner")
    config_file = str(Path(__file__).parents[1] / "configs" / "accelerate" / f"{config}.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu"}
    single = subprocess.run([sys.executable, script, str(tmp_path / "one"), "4", objective, "1", data,
                             str(tmp_path / "captioner")], env=env,
                            capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, "--num_processes", "2",
              "--mixed_precision", "no"]
    double = subprocess.run([*launch, script, str(tmp_path / "two"), "2", objective, "2", data,
                             str(tmp_path / "captioner"), *(["checkpoints"] if resume else [])], env=env,
                            capture_output=True, text=True, timeout=900)
    assert double.returncode == 0, double.stderr[-3000:]
    if resume:  # a third launch resumes the 2-process run from its checkpoint of step 4 (of 8)
        resumed = subprocess.run([*launch, script, str(tmp_path / "resumed"), "2", objective, "2", data,
                                  str(tmp_path / "captioner"), str(tmp_path / "two" / "checkpoint-4")], env=env,
                                 capture_output=True, text=True, timeout=900)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    assert len(one["loss"]) == len(two["loss"]) == 8
    assert np.allclose(one["loss"], two["loss"], rtol=1e-4), (one, two)
    assert np.allclose(one["ot"], two["ot"], rtol=1e-4), (one, two)  # logged terms: the mean over processes
    # the main process wrote a complete captioner (under FSDP, gathered from the shards): the trained audio parts,
    # the untouched LM, the same files
    start, final_one, final_two = (AutoModel.from_pretrained(path) for path in (
        tmp_path / "captioner", tmp_path / "one" / "final", tmp_path / "two" / "final"))
    assert sorted(os.listdir(tmp_path / "two" / "final")) == sorted(os.listdir(tmp_path / "one" / "final"))
    assert final_two.state_dict().keys() == start.state_dict().keys()
    assert torch.equal(final_two.lm_head.weight, start.lm_head.weight)
    assert not torch.equal(final_two.model.audio_to_vision.weight, start.model.audio_to_vision.weight)
    torch.testing.assert_close(final_two.model.audio_to_vision.weight, final_one.model.audio_to_vision.weight,
                               rtol=1e-4, atol=1e-5)
    if objective == "attentive_ot":
        scorers_one, scorers_two = (load_file(tmp_path / run / "final" / SCORERS_NAME) for run in ("one", "two"))
        assert scorers_two.keys() == scorers_one.keys()
        for name, tensor in scorers_one.items():  # Adam normalises each gradient: an element whose gradient is
            # about zero may move by up to a step of the scorers' learning rate (1e-4) on summation-order noise; the
            # mean difference stays a tenth of a step
            difference = (scorers_two[name] - tensor).abs()
            assert difference.max() <= 1e-4 and difference.mean() < 1e-5, (name, difference.max(), difference.mean())
    if resume:  # the resumed run ends with the uninterrupted run's model and scorers
        final_resumed = AutoModel.from_pretrained(tmp_path / "resumed" / "final")
        for name, tensor in final_two.state_dict().items():
            assert torch.equal(final_resumed.state_dict()[name], tensor), name
        scorers = load_file(tmp_path / "two" / "final" / SCORERS_NAME)
        for name, tensor in load_file(tmp_path / "resumed" / "final" / SCORERS_NAME).items():
            assert torch.equal(tensor, scorers[name]), name


@pytest.mark.parametrize("optimizer_class,weight_decay,amsgrad", [
    (torch.optim.AdamW, 0.1, False), (torch.optim.Adam, 0.1, False), (torch.optim.AdamW, 0.0, True)])
def test_initialized_optimizer_state_is_the_lazy_one(optimizer_class, weight_decay, amsgrad):
    """Under FSDP the trainer creates every parameter's optimiser state before training (the scorers' included,
    which take no step in the uniform-weight epochs): step 0 and zero moments, the parameters untouched, and
    training from there equal, bit for bit, to training with the state Adam creates at the first step."""
    from dali_hf.trainers.alignment import initialize_optimizer_state

    def build():
        torch.manual_seed(0)
        encoder, scorers = torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)
        optimizer = optimizer_class([{"params": encoder.parameters()},
                                     {"params": scorers.parameters(), "lr": 1e-2, "weight_decay": 0.0}],
                                    lr=1e-3, weight_decay=weight_decay, amsgrad=amsgrad)
        return encoder, scorers, optimizer

    def train(encoder, scorers, optimizer, steps, scorers_from):
        torch.manual_seed(1)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            hidden = encoder(torch.randn(5, 4))
            loss = (scorers(hidden) if step >= scorers_from else hidden).square().mean()
            loss.backward()
            optimizer.step()

    lazy, initialized = build(), build()
    before = [param.clone() for param in initialized[0].parameters()]
    initialize_optimizer_state(initialized[2])
    state = initialized[2].state
    assert all(param.grad is None for param in itertools.chain(initialized[0].parameters(),
                                                               initialized[1].parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, initialized[0].parameters(), strict=True))
    assert len(state) == 4 and all(float(s["step"]) == 0 for s in state.values())
    assert all(not value.any() for s in state.values() for key, value in s.items() if key != "step")
    train(*lazy, steps=2, scorers_from=1)
    train(*initialized, steps=2, scorers_from=1)
    for a, b in zip(itertools.chain(lazy[0].parameters(), lazy[1].parameters()),
                    itertools.chain(initialized[0].parameters(), initialized[1].parameters()), strict=True):
        assert torch.equal(a, b)
        for key, value in lazy[2].state[a].items():
            assert torch.equal(value, initialized[2].state[b][key]), key
