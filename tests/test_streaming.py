"""AlignmentStream: deterministic global batches split between processes, parallel decoding, cheap mid-epoch
resume, skipped clips reported; and the alignment trainer resuming a streamed run mid-epoch."""

import datasets
import numpy as np
import pytest
import torch

from dali_hf.testing import StopAfterStep, pairs_dataset, tiny_captioner
from dali_hf.trainers import AlignmentStream


def numbered(n=24):
    """Rows with features precomputed: each clip's features are filled with its number, so batches show which
    clips they hold."""
    return datasets.Dataset.from_dict({
        "id": [str(i) for i in range(n)],
        "input_features": [np.full((4, 3), i, np.float32) for i in range(n)],
        "pixel_values": [np.zeros((3, 2, 2), np.float32) for _ in range(n)],
    }).with_format("numpy")


class CountingStream(AlignmentStream):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoded = []

    def _decode(self, row):
        result = super()._decode(row)
        self.decoded.append(int(result["input_features"][0, 0]) if result else None)
        return result


def clips(batch):
    return sorted(batch["input_features"][:, 0, 0].int().tolist())


def passes(source, processor, batch, processes, epoch=0, **kwargs):
    streams = [CountingStream(source, processor, seed=3, **kwargs).configure(batch, processes, rank)
               for rank in range(processes)]
    for stream in streams:
        stream.set_epoch(epoch)
    return [[clips(b) for b in stream] for stream in streams], streams


@pytest.fixture(scope="module")
def processor():
    return tiny_captioner("ast")[1]


@pytest.mark.parametrize("kind", ["map", "iterable"])
def test_processes_share_out_the_global_batches_of_one(processor, kind):
    data = numbered(24)
    source = data if kind == "map" else data.to_iterable_dataset(num_shards=4).shuffle(seed=5, buffer_size=6)
    (one,), _ = passes(source, processor, batch=6, processes=1)
    (first, second), _ = passes(source, processor, batch=3, processes=2)
    assert len(one) == len(first) == len(second) == 4
    for whole, a, b in zip(one, first, second, strict=True):
        assert whole == sorted(a + b) and not set(a) & set(b)
    assert sorted(sum(one, [])) == list(range(24))  # every clip once per epoch
    (again,), _ = passes(source, processor, batch=6, processes=1)
    (next_epoch,), _ = passes(source, processor, batch=6, processes=1, epoch=1)
    assert again == one and next_epoch != one


def test_incomplete_last_global_batch_is_dropped(processor):
    (a, b), streams = passes(numbered(10), processor, batch=2, processes=2)
    assert len(streams[0]) == len(a) == len(b) == 2


def test_resume_yields_placeholders_without_decoding_them(processor):
    data = numbered(24)
    (whole,), _ = passes(data, processor, batch=4, processes=1)
    stream = CountingStream(data, processor, seed=3).configure(4)
    stream.resume(0, 2)
    batches = list(stream)
    assert batches[:2] == [{}, {}]
    assert [clips(b) for b in batches[2:]] == whole[2:]
    assert sorted(stream.decoded) == sorted(sum(whole[2:], []))  # skipped clips were never decoded
    assert [clips(b) for b in stream] == whole  # resume applies to one pass only


def test_undecodable_clips_are_skipped_and_named(processor, caplog):
    data = pairs_dataset(8)
    broken = data.map(lambda row, i: {"audio": {"array": [], "sampling_rate": 16000}} if i == 2 else {},
                      with_indices=True)
    stream = AlignmentStream(broken, processor, seed=0, decode_workers=2).configure(4)
    sizes = [len(b["input_features"]) for b in stream]
    assert sorted(sizes) == [3, 4] and stream.skipped == ["clip2"]
    assert "clip2" in caplog.text


def test_trainer_resumes_a_stream_mid_epoch(make_trainer, tmp_path):
    source = pairs_dataset(16).to_iterable_dataset(num_shards=4).shuffle(seed=1, buffer_size=4)
    settings = dict(objective="ot", num_train_epochs=2, save_strategy="steps", save_steps=2, per_device_train_batch_size=4)

    def trainer_for(path):
        trainer = make_trainer(lambda processor: CountingStreamFromRows(source, processor, num_rows=16,
                                                                     decode_workers=1),
                               path, **settings)
        trainer.train_dataset.decoded = []
        return trainer

    full = trainer_for(tmp_path / "full")
    full.train()
    part = trainer_for(tmp_path / "part")
    part.add_callback(StopAfterStep(2))  # mid-epoch: an epoch is 4 steps
    part.train()
    resumed = trainer_for(tmp_path / "part")
    resumed.train(resume_from_checkpoint=str(tmp_path / "part" / "checkpoint-2"))

    def losses(trainer):
        return [(log["step"], log["loss"]) for log in trainer.state.log_history if "loss" in log]

    assert [s for s, _ in losses(full)] == list(range(1, 9))
    assert [s for s, _ in losses(resumed)[-6:]] == list(range(3, 9))
    assert [v for _, v in losses(resumed)[-6:]] == pytest.approx([v for _, v in losses(full)[-6:]], rel=1e-6)
    # one decoding thread: clips are decoded in order (the stopped run had decoded a batch ahead)
    assert part.train_dataset.decoded[:8] == full.train_dataset.decoded[:8]
    assert resumed.train_dataset.decoded == full.train_dataset.decoded[8:]  # nothing repeated, nothing skipped
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


class CountingStreamFromRows(AlignmentStream):
    """Records the id of every clip it decodes."""

    def _decode(self, row):
        self.decoded.append(row["id"])
        return super()._decode(row)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.float16, 2e-3)])
def test_cached_image_tokens_give_the_loss_of_images(make_trainer, tmp_path, dtype, tolerance):
    from dali_hf.data import cache_image_tokens

    data = pairs_dataset(8)
    trainer = make_trainer(data, tmp_path, objective="ot")
    cached = cache_image_tokens(trainer.model, trainer.processing_class, data, batch_size=3, dtype=dtype)
    assert "image" not in cached.column_names and cached.features["image_tokens"].dtype == str(dtype)[6:]
    model = trainer.model.eval()
    with torch.no_grad():
        from_images = trainer.compute_loss(model, trainer.data_collator([data[i] for i in range(8)]))
        from_cache = trainer.compute_loss(model, trainer.data_collator([cached[i] for i in range(8)]))
    assert abs(from_cache.item() - from_images.item()) <= tolerance * abs(from_images.item())
