"""Datasets in the column convention (`id`, `audio`, `image`, `caption`), built from files."""

import os
import uuid
from pathlib import Path

import datasets
import numpy as np
import torch
from transformers.utils import logging

from .modeling.media import VIDEO_EXTENSIONS, AudioInputError, frame_at, load_image, prepare_audio

__all__ = ["PAIR_FEATURES", "cache_image_tokens", "pairs_from_videos"]

logger = logging.get_logger(__name__)

PAIR_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "audio": {"array": datasets.List(datasets.Value("float32")), "sampling_rate": datasets.Value("int32")},
    "image": datasets.Image(),
})


def pairs_from_videos(
    folder: str | os.PathLike, frame: str | float = "middle", sampling_rate: int = 16000,
    cache_dir: str | None = None,
) -> tuple[datasets.Dataset, list[dict]]:
    """(audio, image) pairs from a folder of video files: the audio track (mono, `sampling_rate`) and one frame
    (`frame`: "middle", "first" or a time in seconds).

    Returns the dataset (written to the datasets cache as it goes, so large folders do not fill memory) and the
    list of skipped files, each {"path", "reason"}: unreadable videos are reported, never replaced.
    """
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) under {folder}")
    skipped: list[dict] = []

    def rows(run_id):  # run_id: a fresh fingerprint, so the datasets cache never hides this run's skips
        for path in paths:
            try:
                audio = prepare_audio(str(path), sampling_rate, name=str(path))
                image = frame_at(str(path), frame)
            except (AudioInputError, RuntimeError, ValueError) as error:
                skipped.append({"path": str(path), "reason": str(error)})
                logger.warning("skipped %s: %s", path, error)
                continue
            yield {"id": str(path.relative_to(folder).with_suffix("")),
                   "audio": {"array": audio.astype(np.float32), "sampling_rate": sampling_rate}, "image": image}

    dataset = datasets.Dataset.from_generator(rows, features=PAIR_FEATURES, cache_dir=cache_dir,
                                              gen_kwargs={"run_id": uuid.uuid4().hex})
    if skipped:
        logger.warning("%d of %d videos skipped", len(skipped), len(paths))
    return dataset, skipped


def cache_image_tokens(model, processor, dataset: datasets.Dataset, batch_size: int = 32,
                       dtype: torch.dtype = torch.float16, cache_dir: str | None = None) -> datasets.Dataset:
    """`dataset` with its `image` column replaced by `image_tokens`: the frozen vision tower's alignment targets,
    computed once instead of every epoch (the tower never trains, so a frame's tokens never change).

    Disk: tokens x width x 2 bytes per clip in float16 — 576 x 1024 x 2 = 1.1 MiB at full size, so 22 GiB for 20k
    clips and 550 GiB for the paper's 500k: worth it for small datasets and many epochs, not for AudioSet. The
    alignment collator and trainer use the column when it is there.
    """
    model = model.eval()
    image_processor = processor.image_processor

    def tokens(batch):
        images = [load_image(image, name=f"image of item {name!r}")
                  for image, name in zip(batch["image"], batch.get("id", batch["image"]), strict=True)]
        pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(model.device, model.dtype)
        with torch.no_grad():
            values = model.get_image_tokens(pixels)
        return {"image_tokens": values.to("cpu", dtype).numpy()}

    tokens_per_image, width = model.config.image_seq_length, model.config.vision_config.hidden_size
    features = datasets.Features({**{k: v for k, v in dataset.features.items() if k != "image"},
                                  "image_tokens": datasets.Array2D((tokens_per_image, width), str(dtype)[6:])})
    return dataset.map(tokens, batched=True, batch_size=batch_size, remove_columns=["image"], features=features,
                       cache_file_name=None if cache_dir is None else os.path.join(cache_dir, "image_tokens.arrow"),
                       desc="caching image tokens")
