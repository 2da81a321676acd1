"""Alignment without the language model (LlavaAudioAlignmentModel): it reads only the parts alignment runs, trains
exactly as the whole captioner does, and saves a complete captioner equal to the whole model's save."""

import os

import pytest
import safetensors.torch
import torch
import transformers.modeling_utils
from transformers import AutoModel, AutoProcessor

from dali_hf.data import cache_image_tokens
from dali_hf.testing import (
    StopAfterStep,
    full_size_captioner,
    pairs_dataset,
    parameter_counts,
    tiny_captioner,
)
from dali_hf.trainers import (
    SCORERS_NAME,
    AlignmentConfig,
    DistributionAlignmentTrainer,
    LlavaAudioAlignmentModel,
)
from dali_hf.trainers import lean as lean_module

ALIGNMENT_PREFIXES = ("model.vision_tower.", "model.audio_tower.", "model.audio_to_vision.")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny captioner saved in several shards: some hold only language-model weights, some hold both kinds."""
    path = tmp_path_factory.mktemp("captioner")
    model, processor, _ = tiny_captioner("ast")
    model.save_pretrained(path, max_shard_size="40KB")
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data():
    return pairs_dataset(8)  # 2 steps an epoch


class Recorder:
    """Wraps `safe_open` where the loaders call it, and records every file opened and every tensor sliced or read
    (`read`: (file, tensor name) pairs)."""

    def __init__(self, monkeypatch):
        self.files, self.read = [], []
        for module in (transformers.modeling_utils, lean_module):
            monkeypatch.setattr(module, "safe_open", self._wrap(module.safe_open))
        real_load_file = safetensors.torch.load_file  # what the Trainer uses to resume a whole model

        def load_file(path, *args, **kwargs):
            self.files.append(os.path.basename(path))
            tensors = real_load_file(path, *args, **kwargs)
            self.read.extend((str(path), key) for key in tensors)
            return tensors

        monkeypatch.setattr(safetensors.torch, "load_file", load_file)

    def _wrap(self, real):
        def safe_open(path, *args, **kwargs):
            self.files.append(os.path.basename(path))
            return _RecordingHandle(real(path, *args, **kwargs), str(path), self.read)

        return safe_open

    def keys(self, under=""):
        return [key for path, key in self.read if path.startswith(str(under))]

    def language_model_keys(self, under=""):
        return sorted({key for key in self.keys(under) if not key.startswith(ALIGNMENT_PREFIXES)})


class _RecordingHandle:
    def __init__(self, handle, path, read):
        self.handle, self.path, self.read = handle, path, read

    def __enter__(self):
        self.handle.__enter__()
        return self

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)

    def get_slice(self, key):
        self.read.append((self.path, key))
        return self.handle.get_slice(key)

    def get_tensor(self, key):
        self.read.append((self.path, key))
        return self.handle.get_tensor(key)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def shards_holding_alignment_weights(folder):
    import json

    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return {name for key, name in weight_map.items() if key.startswith(ALIGNMENT_PREFIXES)}, set(weight_map.values())


def test_lean_loading_reads_no_language_model_tensor(folder, monkeypatch):
    recorder = Recorder(monkeypatch)
    whole = AutoModel.from_pretrained(folder)
    assert recorder.language_model_keys(), "the recorder sees the whole model's reads"
    recorder.read.clear()
    recorder.files.clear()

    lean = LlavaAudioAlignmentModel.from_pretrained(folder)
    assert recorder.language_model_keys() == []
    assert sorted(recorder.keys()) == sorted(lean.state_dict())  # each of its own tensors, once
    needed, every_shard = shards_holding_alignment_weights(folder)
    assert set(recorder.files) == needed and needed != every_shard  # shards of only LM weights are not opened
    assert not any("language_model" in name or "lm_head" in name for name, _ in lean.named_parameters())
    for name, tensor in lean.state_dict().items():
        assert torch.equal(tensor, whole.state_dict()[name]), name


def trainer_for(model, folder, data, output_dir, **overrides):
    settings = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-3,
                    num_train_epochs=2, logging_steps=1, save_strategy="no", report_to=[], seed=0, use_cpu=True,
                    dataloader_num_workers=0, disable_tqdm=True, lambda_values=[0.05], lambda_final=0.05,
                    uniform_epochs=1)
    settings.update(overrides)
    return DistributionAlignmentTrainer(model=model, args=AlignmentConfig(**settings), train_dataset=data,
                                        processing_class=AutoProcessor.from_pretrained(folder))


def losses(trainer):
    return [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]


# `pytest -m "not slow"` runs attentive OT, `make test` all five
@pytest.mark.parametrize("objective,solver", [
    pytest.param("contrastive", "exact", marks=pytest.mark.slow),
    pytest.param("mmd", "exact", marks=pytest.mark.slow),
    pytest.param("ot", "exact", marks=pytest.mark.slow),
    pytest.param("ot", "sinkhorn", marks=pytest.mark.slow),
    ("attentive_ot", "exact"),
])
def test_lean_training_and_save_equal_the_whole_model(folder, data, tmp_path, objective, solver):
    whole = trainer_for(AutoModel.from_pretrained(folder), folder, data, tmp_path / "whole", objective=objective,
                        solver=solver)
    lean = trainer_for(str(folder), folder, data, tmp_path / "lean", objective=objective, solver=solver)
    assert isinstance(lean.model, LlavaAudioAlignmentModel)
    whole.train()
    lean.train()
    assert losses(lean) == losses(whole) and len(losses(lean)) == 4
    trained = [(name, p) for name, p in lean.model.named_parameters() if p.requires_grad]
    assert trained
    for name, param in trained:
        assert torch.equal(param, whole.model.get_parameter(name)), name
    if objective == "attentive_ot":
        for a, b in zip(lean.scorers.parameters(), whole.scorers.parameters(), strict=True):
            assert torch.equal(a, b)

    whole.save_model()
    lean.save_model()
    for name in ("model.safetensors", "config.json", "generation_config.json", "modeling_llava_audio.py"):
        assert (tmp_path / "lean" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    reloaded, reference = AutoModel.from_pretrained(tmp_path / "lean"), AutoModel.from_pretrained(tmp_path / "whole")
    assert type(reloaded) is type(reference)
    assert reloaded.state_dict().keys() == reference.state_dict().keys()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_resume_restores_the_alignment_parts_and_the_scorers(folder, data, tmp_path):
    """A checkpoint is a whole captioner with the scorers beside it; the Trainer's own loader resumes the lean
    model from it (its `load_state_dict` keeps the alignment parts of the captioner's state dict)."""
    settings = dict(objective="attentive_ot", save_strategy="steps", save_steps=2)
    full = trainer_for(str(folder), folder, data, tmp_path / "full", **settings)
    full.train()
    part = trainer_for(str(folder), folder, data, tmp_path / "part", **settings)
    part.add_callback(StopAfterStep(2))
    part.train()
    checkpoint = tmp_path / "part" / "checkpoint-2"
    assert isinstance(AutoModel.from_pretrained(checkpoint), transformers.PreTrainedModel)  # a whole captioner
    assert (checkpoint / SCORERS_NAME).is_file()
    resumed = trainer_for(str(folder), folder, data, tmp_path / "part", **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert losses(resumed)[-2:] == losses(full)[-2:] and len(losses(full)) == 4
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert any(name.startswith("scorers.") for name, _ in full.model.named_parameters())


def test_cached_image_tokens_of_the_lean_model(folder):
    rows = pairs_dataset(5)
    processor = AutoProcessor.from_pretrained(folder)
    lean = cache_image_tokens(LlavaAudioAlignmentModel.from_pretrained(folder), processor, rows, batch_size=2)
    whole = cache_image_tokens(AutoModel.from_pretrained(folder), processor, rows, batch_size=2)
    assert lean["image_tokens"] == whole["image_tokens"]


def test_misuse_gets_a_clear_error(folder, tmp_path):
    lean = LlavaAudioAlignmentModel.from_pretrained(folder)
    with pytest.raises(ValueError, match="loaded from there"):
        lean.save_pretrained(folder)
    with pytest.raises(ValueError, match="no language model"):
        lean(input_ids=torch.tensor([[1, 2]]))
    model, _, _ = tiny_captioner("ast")
    model.model.language_model.save_pretrained(tmp_path / "not_a_captioner")
    with pytest.raises(ValueError, match="not a LlavaAudio captioner folder"):
        LlavaAudioAlignmentModel.from_pretrained(tmp_path / "not_a_captioner")


def test_a_requested_dtype_saves_as_the_whole_model_does(folder, tmp_path):
    from dali_hf.trainers.stages import freeze_all_but

    whole = AutoModel.from_pretrained(folder, dtype=torch.bfloat16)
    lean = LlavaAudioAlignmentModel.from_pretrained(folder, dtype=torch.bfloat16)
    for model in (whole, lean):  # as the trainer does: the trained parts kept in float32
        freeze_all_but(model, "audio_tower", "audio_to_vision")
    whole.save_pretrained(tmp_path / "whole")
    lean.save_pretrained(tmp_path / "lean")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "lean" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert AutoModel.from_pretrained(tmp_path / "lean").lm_head.weight.dtype == torch.bfloat16


def test_memory_table_lean_row_drops_exactly_the_unloaded_parts(monkeypatch):
    from bench import memory

    monkeypatch.setattr(memory, "audio_activation_fit", lambda *args: (1, 1))  # activations are not checked here
    model = full_size_captioner()
    whole, lean = (memory.stage_memory(model, stage) for stage in memory.STAGES[1:3])
    assert "whole" in whole["stage"] and lean["stage"].startswith("1b") and "no LM" in lean["stage"]
    counts = parameter_counts(model)
    unloaded = sum(counts[part] for part in ("language_model", "multi_modal_projector", "audio_multi_modal_projector",
                                             "prefix_embeddings"))
    assert whole["weights"] - lean["weights"] == 2 * unloaded  # frozen, bf16
    assert lean["activations"] == whole["activations"]


def test_largest_batch_that_fits_a_card():
    from bench.memory import CARD_HEADROOM_GIB, GiB, largest_batch

    row = {"weights": 10 * GiB, "gradients": GiB, "optimizer": GiB, "activations": 8 * GiB,
           "activations_checkpointed": 2 * GiB, "batch_per_device": 4}
    # (24 - headroom - 12 GiB) left, over 0.5 GiB a clip checkpointed, 2 GiB a clip without
    assert largest_batch(row, 24) == int((12 - CARD_HEADROOM_GIB) / 0.5)
    assert largest_batch(row, 24, checkpointed=False) == int((12 - CARD_HEADROOM_GIB) / 2)
    assert largest_batch(row, 12) == 0
