"""Batches from the column convention: `id`, `audio` ({"array", "sampling_rate"} or a path), `image` (PIL image or
a path), `caption`."""

import torch

from ..modeling.media import load_image, prepare_audio

__all__ = ["AlignmentCollator", "CaptionCollator", "FeatureAugmentation", "assistant_labelled_batch"]


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

    Each row is a conversation (`LlavaAudioProcessor.caption_messages`) ending with the caption, labelled by
    [`assistant_labelled_batch`]; rows are padded on the right. The system text is the training one of
    `prompt_preset` (default: the processor's), see `LlavaAudioProcessor.caption_prompt`.
    """

    def __init__(self, processor, image: bool = False, audio: bool = False, prefix: bool = False,
                 prompt: str | None = None, prompt_preset: str | None = None):
        if not (image or audio):
            raise ValueError("CaptionCollator needs image=True and/or audio=True")
        self.processor, self.image, self.audio = processor, image, audio
        self.prompt_options = dict(prefix=prefix, prompt=prompt, prompt_preset=prompt_preset, training=True)
        processor.caption_prompt(image=image, audio=audio, **self.prompt_options)  # a wrong preset fails here

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rate = self.processor.feature_extractor.sampling_rate
        conversations = []
        for i, ex in enumerate(examples):
            name = ex.get("id", i)
            image = self.image and load_image(ex["image"], name=f"image of item {name!r}")
            audio = self.audio and prepare_audio(ex["audio"], rate, name=f"audio of item {name!r}")
            conversations.append(self.processor.caption_messages(
                image=image, audio=audio, caption=ex["caption"].strip(), **self.prompt_options))
        return assistant_labelled_batch(self.processor, conversations)


def assistant_labelled_batch(processor, conversations: list[list[dict]], chat_template: str | None = None) -> dict:
    """Model inputs for conversations that end with the answer, padded on the right, with `labels` on the tokens
    that the chat template marks as the assistant's (`{% generation %}`: the answer and its </s>) and -100 on the
    rest (system text, user turn, placeholders, padding): the loss of TRL's `assistant_only_loss`, through
    transformers' `apply_chat_template(..., return_assistant_tokens_mask=True)`. The one way the project's training
    batches get their labels."""
    batch = processor.apply_chat_template(
        conversations, chat_template=chat_template, tokenize=True, return_dict=True, return_tensors="pt",
        return_assistant_tokens_mask=True, processor_kwargs={"padding": True, "padding_side": "right"},
    )
    assistant = batch.pop("assistant_masks").bool()
    if not assistant.any(dim=1).all():
        raise ValueError("A conversation has no answer to train on: end each one with an assistant message.")
    batch["labels"] = batch["input_ids"].masked_fill(~assistant, -100)
    return dict(batch)
