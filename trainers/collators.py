"""Batches from the column convention: `id`, `audio` ({"array", "sampling_rate"} or a path), `image` (PIL image or
a path), `caption`."""

import torch

from ..modeling.media import load_image, prepare_audio

__all__ = ["AlignmentCollator", "CaptionCollator", "FeatureAugmentation"]


class AlignmentCollator:
    """(audio, image) pairs -> `input_features` (+ `input_features_mask`) and `pixel_values` for alignment. Rows
    that already hold `input_features` and `pixel_values` (computed once for many epochs) are only stacked; rows
    with `image_tokens` (cached CLIP targets, see `cache_image_tokens`) pass them on instead of an image."""

    def __init__(self, processor):
        self.feature_extractor = processor.feature_extractor
        self.image_processor = processor.image_processor

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        image_key = "image_tokens" if "image_tokens" in examples[0] else "pixel_values"
        if "input_features" in examples[0] and image_key in examples[0]:  # features computed once, beforehand
            return {key: torch.stack([torch.as_tensor(ex[key]) for ex in examples])
                    for key in ("input_features", image_key, "input_features_mask") if key in examples[0]}
        rate = self.feature_extractor.sampling_rate
        clips = [prepare_audio(ex["audio"], rate, name=f"audio of item {ex.get('id', i)!r}")
                 for i, ex in enumerate(examples)]
        audio = self.feature_extractor(clips, sampling_rate=rate, return_tensors="pt")
        batch = {"input_features": audio.get("input_features", audio.get("input_values"))}
        mask = audio.get("input_features_mask", audio.get("attention_mask"))
        if mask is not None:
            batch["input_features_mask"] = mask
        if image_key == "image_tokens":
            batch["image_tokens"] = torch.stack([torch.as_tensor(ex["image_tokens"]) for ex in examples])
            return batch
        images = [load_image(ex["image"], name=f"image of item {ex.get('id', i)!r}") for i, ex in enumerate(examples)]
        batch["pixel_values"] = self.image_processor(images, return_tensors="pt")["pixel_values"]
        return batch


class FeatureAugmentation:
    """The reference alignment run's feature augmentation, on normalised features [B, frames, bins]: per clip,
    `features + U(0, 1) * r * noise_scale` (one r ~ U(0, 1) per clip, fresh U(0, 1) per value), then, with `roll`, a
    roll along time by an integer drawn from [-frames, frames) (the padding mask rolls with it). Draws come from
    its own generator, seeded with `seed`, so a run is reproducible and no other random stream moves."""

    def __init__(self, noise_scale: float = 0.1, roll: bool = True, seed: int = 0):
        self.noise_scale, self.roll = noise_scale, roll
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, features: torch.Tensor, mask: torch.Tensor | None = None):
        """Augmented copies of `features` [B, T, F] and `mask` [B, T] (None stays None)."""
        batch, frames = features.shape[:2]
        amplitude = torch.rand(batch, 1, 1, generator=self.generator) * self.noise_scale
        noise = torch.rand(features.shape, generator=self.generator) * amplitude
        features = features + noise.to(features.device, features.dtype)
        if not self.roll:
            return features, mask
        shifts = torch.randint(-frames, frames, (batch,), generator=self.generator).tolist()
        features = torch.stack([row.roll(shift, 0) for row, shift in zip(features, shifts, strict=True)])
        if mask is not None:
            mask = torch.stack([row.roll(shift, 0) for row, shift in zip(mask, shifts, strict=True)])
        return features, mask

    def apply(self, batch: dict) -> dict:
        """`batch` with its `input_features` (and `input_features_mask`) augmented."""
        features, mask = self(batch["input_features"], batch.get("input_features_mask"))
        batch = dict(batch, input_features=features)
        if mask is not None:
            batch["input_features_mask"] = mask
        return batch


class CaptionCollator:
    """(inputs, caption) rows -> a language-modelling batch: the chat prompt for the chosen inputs, then the caption
    and EOS as the only labelled tokens (the prompt, the placeholders and the padding are -100).

    Prompt and caption are tokenised apart and joined as ids (as TRL does), so the label boundary never depends on
    how the tokenizer would merge them; rows are padded on the right. The system text is the training one of
    `prompt_preset` (default: the processor's), see `LlavaAudioProcessor.caption_prompt`.
    """

    def __init__(self, processor, image: bool = False, audio: bool = False, prefix: bool = False,
                 prompt: str | None = None, prompt_preset: str | None = None):
        if not (image or audio):
            raise ValueError("CaptionCollator needs image=True and/or audio=True")
        self.processor, self.image, self.audio = processor, image, audio
        self.prompt = processor.caption_prompt(image=image, audio=audio, prefix=prefix, prompt=prompt,
                                               prompt_preset=prompt_preset, training=True)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        processor, tokenizer = self.processor, self.processor.tokenizer
        kwargs = {}
        if self.image:
            kwargs["images"] = [load_image(ex["image"], name=f"image of item {ex.get('id', i)!r}")
                                for i, ex in enumerate(examples)]
        if self.audio:
            rate = processor.feature_extractor.sampling_rate
            kwargs["audio"] = [prepare_audio(ex["audio"], rate, name=f"audio of item {ex.get('id', i)!r}")
                               for i, ex in enumerate(examples)]
            kwargs["sampling_rate"] = rate
        batch = processor(text=[self.prompt] * len(examples), padding_side="right", return_tensors="pt", **kwargs)
        rows, labels = [], []
        for ids, mask, ex in zip(batch["input_ids"], batch["attention_mask"], examples, strict=True):
            prompt_ids = ids[mask.bool()].tolist()
            caption_ids = tokenizer(ex["caption"].strip(), add_special_tokens=False)["input_ids"]
            caption_ids = caption_ids + [tokenizer.eos_token_id]
            rows.append(prompt_ids + caption_ids)
            labels.append([-100] * len(prompt_ids) + caption_ids)
        length = max(map(len, rows))
        pad = tokenizer.pad_token_id
        batch["input_ids"] = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
        batch["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
        batch["labels"] = torch.tensor([lab + [-100] * (length - len(lab)) for lab in labels])
        return dict(batch)
