"""Stages 1a (prefix tuning) and 2 (pseudo-captions, distillation): only the trained part moves, image captioning
stays LLaVA's exactly, pseudo-captioning survives a kill."""

import json
import math

import numpy as np
import pytest
import torch

from dali_hf.testing import pairs_dataset, random_clip, random_image, tiny_captioner
from dali_hf.trainers import (
    AlignmentConfig,
    AudioVisualDistillationTrainer,
    DistillationConfig,
    DistributionAlignmentTrainer,
    PrefixTuningConfig,
    PrefixTuningTrainer,
    attach_captions,
    generate_pseudo_captions,
)
from dali_hf.trainers.distillation import PSEUDO_CAPTIONS_FILE, SKIPPED_FILE

CAPTIONS = ["a dog barks", "a bell rings", "rain falls", "a car engine", "people talk", "water flows"]
GREEDY = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)


@pytest.fixture(scope="module")
def captioned():
    data = pairs_dataset(12, seed=3)
    return data.add_column("caption", [CAPTIONS[i % len(CAPTIONS)] for i in range(len(data))])


def _settings(tmp_path, **overrides):
    return dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=2, logging_steps=1,
                save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=True, warmup_steps=0) | overrides


def _assert_only_changed(model, before, part):
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith(f"model.{part}") for name in changed), changed


def _assert_image_path_is_llava(model, processor, llava_parts):
    llava, llava_processor = llava_parts
    prompt = "USER: <image>\ndescribe this image ASSISTANT:"
    ours = processor(text=prompt, images=random_image(5), return_tensors="pt")
    theirs = llava_processor(text=prompt, images=random_image(5), return_tensors="pt")
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**ours).logits, llava(**theirs).logits)
    assert torch.equal(model.generate(**ours, **GREEDY), llava.generate(**theirs, **GREEDY))


def test_prefix_tuning_trains_only_the_prefix(llava_parts, captioned, tmp_path):
    model, processor, _ = tiny_captioner("ast")
    before = {name: p.clone() for name, p in model.named_parameters()}
    trainer = PrefixTuningTrainer(model=model, args=PrefixTuningConfig(**_settings(tmp_path, learning_rate=0.05)),
                                  train_dataset=captioned, processing_class=processor)
    batch = trainer.data_collator([captioned[0], captioned[1]])
    caption_ids = batch["labels"][0][batch["labels"][0] != -100]
    assert processor.decode(caption_ids[:-1]) == captioned[0]["caption"]
    assert caption_ids[-1] == processor.tokenizer.eos_token_id
    assert (batch["input_ids"][0] == processor.prefix_token_id).sum() == model.config.num_prefix_tokens
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    _assert_only_changed(model, before, "prefix_embeddings")
    _assert_image_path_is_llava(model, processor, llava_parts)


def test_distillation_trains_only_the_audio_projector(llava_parts, captioned, tmp_path):
    model, processor, _ = tiny_captioner("ast")
    before = {name: p.clone() for name, p in model.named_parameters()}
    trainer = AudioVisualDistillationTrainer(
        model=model, args=DistillationConfig(**_settings(tmp_path, learning_rate=0.01)), train_dataset=captioned,
        processing_class=processor)
    batch = trainer.data_collator([captioned[0]])
    assert (batch["input_ids"] == processor.prefix_token_id).sum() == 0  # no prefix by default
    assert "pixel_values" not in batch  # audio only
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
    _assert_only_changed(model, before, "audio_multi_modal_projector")
    _assert_image_path_is_llava(model, processor, llava_parts)


@pytest.mark.parametrize("stage", ["prefix", "distill"])
def test_caption_stages_warm_up_over_3_percent_of_the_steps_and_the_card_says_so(captioned, tmp_path, stage):
    """The authors' 3% warm-up is the Trainer's: the learning rate of every optimiser step, read from the optimiser,
    equals a hand-computed linear warm-up then cosine decay, and the card records the warm-up steps used."""
    from transformers import TrainerCallback

    trainer_class, config_class = {"prefix": (PrefixTuningTrainer, PrefixTuningConfig),
                                   "distill": (AudioVisualDistillationTrainer, DistillationConfig)}[stage]
    args = config_class(output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=10, learning_rate=0.01,
                        save_strategy="no", report_to=[], seed=0, use_cpu=True, disable_tqdm=True)
    assert (args.warmup_steps, args.lr_scheduler_type) == (0.03, "cosine")  # the defaults under test

    seen = []

    class LearningRates(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            seen.append(optimizer.param_groups[0]["lr"])

    model, processor, _ = tiny_captioner("ast")
    trainer = trainer_class(model=model, args=args, train_dataset=captioned.select(range(4)),
                            processing_class=processor, callbacks=[LearningRates()])
    trainer.train()
    warmup = 1  # ceil(0.03 * 10 steps): the first step's learning rate is 0
    by_hand = [0.01 * step / warmup if step < warmup
               else 0.01 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (10 - warmup))) for step in range(10)]
    assert seen == pytest.approx(by_hand, rel=1e-6, abs=1e-12)
    assert seen[:2] == [0.0, 0.01]

    trainer.save_model()
    record = model.config.training_stages[-1]
    assert (record["optimizer_steps"], record["warmup_steps"]) == (10, warmup)
    assert "warmup_steps=1" in (tmp_path / "README.md").read_text()


def test_pseudo_captions_survive_a_kill(ast_captioner, tmp_path):
    model, processor = ast_captioner
    data = pairs_dataset(10, seed=4)
    broken = data.select(range(1)).map(lambda row: {**row, "id": "broken", "audio": {"array": [],
                                                                                    "sampling_rate": 16000}})
    from datasets import concatenate_datasets

    data = concatenate_datasets([data, broken])
    out = tmp_path / "pseudo"
    real_generate, calls = model.generate, {"n": 0}

    def dies_on_third_batch(**kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_generate(**kwargs)

    model.generate = dies_on_third_batch
    try:
        with pytest.raises(KeyboardInterrupt):
            generate_pseudo_captions(model, processor, data, str(out), batch_size=3, **GREEDY)
    finally:
        del model.generate
    with open(out / PSEUDO_CAPTIONS_FILE, "a") as handle:
        handle.write('{"id": "clip9", "capt')  # a line cut by the kill
    assert len((out / PSEUDO_CAPTIONS_FILE).read_text().splitlines()) == 7

    result = generate_pseudo_captions(model, processor, data, str(out), batch_size=3, **GREEDY)
    assert sorted(result["id"]) == sorted(f"clip{i}" for i in range(10))  # all there, no duplicates
    skipped = [json.loads(line) for line in (out / SKIPPED_FILE).read_text().splitlines()]
    assert [row["id"] for row in skipped] == ["broken"] and "empty" in skipped[0]["reason"]
    settings = json.loads((out / "generation_settings.json").read_text())
    assert settings["do_sample"] is False and "<prefix>" in settings["prompt"]
    # the same captions as one uninterrupted run
    again = generate_pseudo_captions(model, processor, data, str(tmp_path / "again"), batch_size=3, **GREEDY)
    assert dict(zip(again["id"], again["caption"], strict=True)) == dict(zip(result["id"], result["caption"], strict=True))
    joined = attach_captions(data, result)
    assert len(joined) == 10 and "caption" in joined.column_names


@pytest.mark.slow  # end to end: the whole recipe through the CLI
def test_train_runs_the_whole_recipe_and_skips_done_stages(captioned, tmp_path, capsys):
    from transformers import AutoModel, AutoProcessor

    from dali_hf.cli import main

    model, processor, _ = tiny_captioner("ast")
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    captioned.select(range(4)).save_to_disk(tmp_path / "prefix-data")
    pairs_dataset(6, seed=5).save_to_disk(tmp_path / "pairs")
    quick = {"max_steps": 2, "per_device_train_batch_size": 2, "use_cpu": True, "save_strategy": "no",
             "disable_tqdm": True}
    config = {
        "model": str(tmp_path / "base"),
        "output_dir": str(tmp_path / "run"),
        "prefix-tune": {"data": str(tmp_path / "prefix-data"), "args": quick},
        "align": {"data": str(tmp_path / "pairs"), "args": {**quick, "objective": "ot"}},
        "pseudo-caption": {"batch_size": 4, "generate": {"max_new_tokens": 4}},
        "distill": {"args": quick},
    }
    (tmp_path / "recipe.json").write_text(json.dumps(config))
    main(["train", "--config", str(tmp_path / "recipe.json")])
    final = tmp_path / "run" / "2b-distill"
    assert (tmp_path / "run" / "1b-align" / "token_distributions.png").exists()
    captioner = AutoModel.from_pretrained(final)
    captioner_processor = AutoProcessor.from_pretrained(final)
    inputs = captioner_processor(text=captioner_processor.caption_prompt(audio=True), audio=random_clip(7),
                                 sampling_rate=16000, return_tensors="pt")
    generated = captioner.generate(**inputs, **GREEDY)
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 5
    # each stage changed its own part only, in order
    base = AutoModel.from_pretrained(tmp_path / "base")
    assert not torch.equal(captioner.model.prefix_embeddings, base.model.prefix_embeddings)
    assert not torch.equal(captioner.model.audio_to_vision.weight, base.model.audio_to_vision.weight)
    assert not torch.equal(captioner.model.audio_multi_modal_projector.linear_1.weight,
                           base.model.audio_multi_modal_projector.linear_1.weight)
    assert torch.equal(captioner.model.multi_modal_projector.linear_1.weight,
                       base.model.multi_modal_projector.linear_1.weight)

    capsys.readouterr()
    main(["train", "--config", str(tmp_path / "recipe.json")])
    assert capsys.readouterr().out.count("already done, skipped") == 4


def test_distillation_with_lora_saves_a_plain_merged_folder(captioned, tmp_path):
    from transformers import AutoModel

    model, processor, _ = tiny_captioner("ast")
    before = {name: p.clone() for name, p in model.named_parameters()}
    trainer = AudioVisualDistillationTrainer(
        model=model, args=DistillationConfig(**_settings(tmp_path, learning_rate=0.01, lora_r=4)),
        train_dataset=captioned, processing_class=processor)
    assert any("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    trainer.train()
    trainer.save_model()
    saved = AutoModel.from_pretrained(tmp_path)
    names = dict(saved.named_parameters())
    assert not any("lora" in name for name in names)
    changed = {name for name, p in names.items() if not torch.equal(p, before[name])}
    assert any(".self_attn.q_proj." in name for name in changed)
    assert any(name.startswith("model.audio_multi_modal_projector") for name in changed)
    assert all(name.startswith(("model.language_model.", "model.audio_multi_modal_projector")) for name in changed)
    with torch.no_grad():  # the merged folder computes what the adapted model computed
        batch = trainer.data_collator([captioned[0]])
        assert torch.allclose(saved(**batch).logits, model(**batch).logits, atol=1e-5)


def test_pseudo_captions_refuse_to_resume_with_other_settings(ast_captioner, tmp_path):
    model, processor = ast_captioner
    data = pairs_dataset(2, seed=6)
    generate_pseudo_captions(model, processor, data, str(tmp_path), batch_size=2, **GREEDY)
    with pytest.raises(ValueError, match="another model or with other settings"):
        generate_pseudo_captions(model, processor, data, str(tmp_path), batch_size=2, max_new_tokens=9)


@pytest.mark.parametrize("stage", ["prefix", "align", "distill"])
def test_half_precision_model_trains_its_part_in_float32(captioned, tmp_path, stage):
    """A bf16 model (as loaded at full size): the trained part becomes float32 master weights, the rest stays bf16
    and unchanged, and a bf16-autocast step runs and moves the trained part."""
    model, processor, _ = tiny_captioner("ast")
    model.to(torch.bfloat16)
    trainer_class, config_class, parts = {
        "prefix": (PrefixTuningTrainer, PrefixTuningConfig, ("prefix_embeddings",)),
        "align": (DistributionAlignmentTrainer, AlignmentConfig, ("audio_tower", "audio_to_vision")),
        "distill": (AudioVisualDistillationTrainer, DistillationConfig, ("audio_multi_modal_projector",)),
    }[stage]
    extra = {"objective": "ot"} if stage == "align" else {}
    args = config_class(**_settings(tmp_path, learning_rate=1e-3, bf16=True, max_steps=2, **extra))
    trainer = trainer_class(model=model, args=args, train_dataset=captioned, processing_class=processor)
    before = {name: p.clone() for name, p in model.named_parameters()}
    for name, param in model.named_parameters():
        trained = name.startswith(tuple(f"model.{part}" for part in parts))
        assert param.requires_grad == trained, name
        assert param.dtype == (torch.float32 if trained else torch.bfloat16), name
    trainer.train()
    assert all(np.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(name.startswith(tuple(f"model.{part}" for part in parts)) for name in changed), changed
