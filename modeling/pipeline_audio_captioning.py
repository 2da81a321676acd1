"""`pipeline("audio-captioning")`: captions of sounds (or of images) with a LlavaAudio captioner.

    captioner = pipeline("audio-captioning", model="org/dali-attentive-ot")
    captioner("dog.wav")                                # [{"caption": "a dog barks"}]
    captioner(["a.flac", "b.mp3"], batch_size=16)       # one list per input
    captioner("clip.mp4", mode="audiovisual")           # sound + the middle frame of the video
    captioner(array, sampling_rate=44100)               # raw samples; any rate, any channel count
    captioner("hour.flac", chunk_length_s=10)           # [{"caption": ..., "timestamp": (0.0, 10.0)}, ...]

Decoding is greedy by default (reproducible); `preset="paper"` samples like the reference code (temperature 0.2,
one beam, 64 new tokens). Long audio is read window by window, so memory stays bounded whatever the length.
"""

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines.pt_utils import PipelineChunkIterator, PipelineIterator, PipelinePackIterator

from .audio_decoding import AudioSource, to_mono_rate

__all__ = ["AudioCaptioningPipeline", "CaptionRequest", "PRESETS"]

PRESETS = {
    "greedy": {"do_sample": False, "num_beams": 1, "max_new_tokens": 64},
    "paper": {"do_sample": True, "temperature": 0.2, "num_beams": 1, "max_new_tokens": 64},
}
MODES = ("audio", "audiovisual", "image")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass
class CaptionRequest:
    """One input of the pipeline: its audio and, for audiovisual or image captioning, its image."""

    audio: Any = None
    image: Any = None


class AudioCaptioningPipeline(ChunkPipeline):
    """Audio (and audiovisual, and image) captioning with [`LlavaAudioForConditionalGeneration`].

    Call arguments: `mode` ("audio", "audiovisual", "image"), `images` (one per input; for audiovisual mode with a
    video file, a frame of the video is used when no image is given: `frame` = "middle" (default), "first", or
    seconds), `sampling_rate` (for raw samples), `prompt`, `prompt_preset` (system texts, default: the
    processor's; see `LlavaAudioProcessor.caption_prompt`), `chunk_length_s` (default: the audio encoder's input
    length) and `stride_length_s` (overlap of consecutive windows) for long audio, `preset` ("greedy" or "paper"),
    `max_new_tokens`, `generate_kwargs`, and the pipeline's own `batch_size`.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.processor is None:
            raise ValueError("AudioCaptioningPipeline needs the model's LlavaAudioProcessor: pass processor=...")

    def __call__(self, inputs=None, images=None, **kwargs):
        mode = kwargs.get("mode", "audio")
        single = not isinstance(inputs, (list, tuple))
        if mode == "image" and inputs is None:
            inputs, images, single = images, None, not isinstance(images, (list, tuple))
        items = [inputs] if single else list(inputs)
        if images is not None:
            image_list = [images] if not isinstance(images, (list, tuple)) else list(images)
            if len(image_list) != len(items):
                raise ValueError(f"got {len(image_list)} images for {len(items)} inputs: pass one image per input")
        else:
            image_list = [None] * len(items)
        if mode == "image":
            requests = [CaptionRequest(image=item if image is None else image) for item, image in
                        zip(items, image_list, strict=True)]
        else:
            requests = [CaptionRequest(audio=item, image=image) for item, image in zip(items, image_list, strict=True)]
        outputs = super().__call__(requests, **kwargs)
        return outputs[0] if single else outputs

    def _sanitize_parameters(self, mode=None, frame=None, prompt=None, sampling_rate=None, chunk_length_s=None,
                             stride_length_s=None, preset=None, max_new_tokens=None, generate_kwargs=None,
                             prompt_preset=None, **kwargs):
        preprocess = {k: v for k, v in dict(mode=mode, frame=frame, prompt=prompt, prompt_preset=prompt_preset,
                                             sampling_rate=sampling_rate,
                                             chunk_length_s=chunk_length_s, stride_length_s=stride_length_s).items()
                      if v is not None}
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        forward = dict(PRESETS[preset or "greedy"])
        forward.update(generate_kwargs or {})
        if max_new_tokens is not None:
            forward["max_new_tokens"] = max_new_tokens
        return preprocess, forward, {}

    # ---- preprocess: one request -> one model input per audio window ------------------------------------------

    def preprocess(self, request: CaptionRequest, mode="audio", frame="middle", prompt=None, sampling_rate=None,
                   chunk_length_s=None, stride_length_s=0.0, prompt_preset=None):
        processor = self.processor
        if mode == "image":
            image = _load_image(request.image, frame)
            inputs = processor(text=processor.caption_prompt(image=True, prompt=prompt, prompt_preset=prompt_preset), images=image,
                               return_tensors="pt")
            yield {**inputs, "is_last": True, "timestamp": None}
            return

        source = AudioSource(request.audio, sampling_rate=sampling_rate)
        image = None
        if mode == "audiovisual":
            if request.image is None and not _is_video(request.audio):
                raise ValueError(
                    "audiovisual mode needs an image: pass images=... (one per input) or a video file, whose frame "
                    "is then used"
                )
            image = _load_image(request.image if request.image is not None else request.audio, frame)
        text = processor.caption_prompt(image=image is not None, audio=True, prefix=image is not None, prompt=prompt,
                                        prompt_preset=prompt_preset)
        target_rate = processor.feature_extractor.sampling_rate
        window = _window_seconds(processor.feature_extractor)
        length = chunk_length_s or window
        if length > window + 1e-6:
            raise ValueError(f"chunk_length_s={length} is longer than the audio encoder's input ({window:.2f} s), "
                             "whose feature extractor would cut the rest: use at most that")
        windows = source.windows(length, stride_length_s) if source.duration > length + 1e-6 else \
            [(0.0, source.duration)]
        for index, (start, end) in enumerate(windows):
            samples = to_mono_rate(source.read(start, end), source.sampling_rate, target_rate)
            inputs = processor(text=text, audio=samples, images=image, sampling_rate=target_rate,
                               return_tensors="pt")
            yield {**inputs, "is_last": index == len(windows) - 1,
                   "timestamp": (round(start, 3), round(end, 3)) if len(windows) > 1 else None}

    # ---- forward and postprocess --------------------------------------------------------------------------------

    def _forward(self, model_inputs, **generate_kwargs):
        is_last, timestamp = model_inputs.pop("is_last"), model_inputs.pop("timestamp")
        prompt_length = model_inputs["input_ids"].shape[1]
        generated = self.model.generate(**model_inputs, **generate_kwargs)
        return {"tokens": generated[:, prompt_length:], "is_last": is_last, "timestamp": timestamp}

    def postprocess(self, model_outputs):
        results = []
        for output in model_outputs:
            tokens = output["tokens"]
            tokens = tokens[0] if tokens.ndim == 2 else tokens
            caption = self.processor.decode(tokens, skip_special_tokens=True).strip()
            timestamp = output["timestamp"]
            results.append({"caption": caption} if timestamp is None else
                           {"caption": caption, "timestamp": tuple(timestamp)})
        return results

    # ---- batching: left-padded prompts, whatever the keys ----------------------------------------------------

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        dataset = PipelineChunkIterator(inputs, self.preprocess, preprocess_params)
        collate = (lambda items: items[0]) if batch_size == 1 else self._collate
        loader = DataLoader(dataset, num_workers=min(num_workers or 0, 1), batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelinePackIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _collate(self, items: list[dict]) -> dict:
        pad_id = self.processor.tokenizer.pad_token_id
        length = max(item["input_ids"].shape[1] for item in items)
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key in ("input_ids", "attention_mask"):
                fill = pad_id if key == "input_ids" else 0
                batch[key] = torch.cat([torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill)
                                        for v in values])
            elif isinstance(values[0], torch.Tensor):
                batch[key] = torch.cat(values)
            else:
                batch[key] = values
        return batch


def _window_seconds(feature_extractor) -> float:
    """The audio encoder's input length in seconds: Whisper's `n_samples`, else `target_length` / `max_length`
    frames of 10 ms (CAV-MAE, AST)."""
    if getattr(feature_extractor, "n_samples", None):
        return feature_extractor.n_samples / feature_extractor.sampling_rate
    frames = getattr(feature_extractor, "target_length", None) or getattr(feature_extractor, "max_length", None)
    if frames:
        return frames * 0.01
    raise ValueError("cannot tell the audio encoder's input length: pass chunk_length_s=")


def _is_video(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(VIDEO_EXTENSIONS)


def _load_image(source, frame="middle"):
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if _is_video(source):
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(os.fspath(source))
        duration = decoder.metadata.duration_seconds or 0.0
        seconds = {"middle": duration / 2, "first": 0.0}.get(frame, frame)
        seconds = min(max(float(seconds), 0.0), max(0.0, duration - 1e-3))
        return Image.fromarray(decoder.get_frame_played_at(seconds).data.permute(1, 2, 0).numpy())
    if isinstance(source, (str, os.PathLike)):
        if not os.path.exists(source):
            raise FileNotFoundError(f"image file not found: {os.fspath(source)}")
        return Image.open(source).convert("RGB")
    raise ValueError(f"unsupported image input of type {type(source).__name__}: pass a PIL image or a path")
