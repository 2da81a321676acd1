"""Batches from the column convention: `id`, `audio` ({"array", "sampling_rate"} or a path), `image` (PIL image or
a path), `caption`."""

import torch
from PIL import Image

from ..audio_io import prepare_audio

__all__ = ["AlignmentCollator", "load_image"]


def load_image(source, name: str = "image") -> Image.Image:
    """An RGB PIL image from a PIL image or a path."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, dict) and source.get("path"):  # datasets' undecoded Image feature
        source = source["path"]
    try:
        return Image.open(source).convert("RGB")
    except (OSError, TypeError, AttributeError) as error:
        raise ValueError(f"{name}: cannot read image from {source!r}: {error}") from error


class AlignmentCollator:
    """(audio, image) pairs -> `input_features` (+ `input_features_mask`) and `pixel_values` for alignment."""

    def __init__(self, processor):
        self.feature_extractor = processor.feature_extractor
        self.image_processor = processor.image_processor

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rate = self.feature_extractor.sampling_rate
        clips = [prepare_audio(ex["audio"], rate, name=f"audio of item {ex.get('id', i)!r}")
                 for i, ex in enumerate(examples)]
        audio = self.feature_extractor(clips, sampling_rate=rate, return_tensors="pt")
        batch = {"input_features": audio.get("input_features", audio.get("input_values"))}
        mask = audio.get("input_features_mask", audio.get("attention_mask"))
        if mask is not None:
            batch["input_features_mask"] = mask
        images = [load_image(ex["image"], name=f"image of item {ex.get('id', i)!r}") for i, ex in enumerate(examples)]
        batch["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return batch
