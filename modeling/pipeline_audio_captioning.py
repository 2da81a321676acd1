"""`pipeline("audio-captioning")`: captions of sounds (or of images) with a LlavaAudio captioner.

    captioner = pipeline("audio-captioning", model="org/dali-attentive-ot")
    captioner("dog.wav")                                # [{"caption": "a dog barks"}]
    captioner(["a.flac", "b.mp3"], batch_size=16)       # one list per input
    captioner("clip.mp4", mode="audiovisual")           # sound + the middle frame of the video
    captioner(array, sampling_rate=44100)               # raw samples; any rate, any channel count
    captioner("hour.flac")                              # [{"chunks": [{"caption": ..., "timestamp": (0.0, 10.24)},
                                                        #               ...]}]
    captioner("hour.flac", long_audio="first_window")   # [{"caption": ...}] of the first 10.24 s only
    captioner(array, sampling_rate=16000, max_new_tokens=20, num_beams=3)  # generation arguments, directly

Decoding is greedy by default (reproducible); `preset="paper"` samples like the reference code (temperature 0.2,
one beam, 64 new tokens). Long audio (longer than the audio encoder's window) is read window by window, so memory
stays bounded whatever the length, and gives one caption per window with its timestamp, in the shape of the `chunks`
of transformers' speech-recognition pipeline (`caption` in place of `text`); no joined caption is made up from them.
Silent audio (no sample above `silence_threshold_db`, -60 dBFS by default) is not described: its caption is
"silence" and its result carries `"silent": True`.
"""

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers.pipelines.base import ChunkPipeline
from transformers.pipelines.pt_utils import PipelineChunkIterator, PipelineIterator, PipelinePackIterator
from transformers.utils import logging

from .media import AudioSource, TruncatedAudioError, frame_seconds, is_video, load_image, to_mono_rate

logger = logging.get_logger(__name__)

__all__ = ["AudioCaptioningPipeline", "CaptionRequest", "LONG_AUDIO_POLICIES", "PRESETS", "SILENCE_CAPTION"]

PRESETS = {
    "greedy": {"do_sample": False, "num_beams": 1, "max_new_tokens": 64},
    "paper": {"do_sample": True, "temperature": 0.2, "num_beams": 1, "max_new_tokens": 64},
}
MODES = ("audio", "audiovisual", "image")
# "chunks": every window captioned, with its timestamp; "first_window": one caption of the first window (how the
# paper's benchmarks are scored: clips longer than the encoder's input are cut to it)
LONG_AUDIO_POLICIES = ("chunks", "first_window")
SILENCE_CAPTION = "silence"
DEFAULT_SILENCE_THRESHOLD_DB = -60.0
FRAME_SECONDS = 0.025  # one analysis frame of the filterbank encoders: shorter audio gives no frame
_NOT_GIVEN = object()


@dataclass
class CaptionRequest:
    """One input of the pipeline: its audio and, for audiovisual or image captioning, its image; `name` says which
    input it is in error messages."""

    audio: Any = None
    image: Any = None
    name: str | None = None


class AudioCaptioningPipeline(ChunkPipeline):
    """Audio (and audiovisual, and image) captioning with [`LlavaAudioForConditionalGeneration`].

    Call arguments: `mode` ("audio", "audiovisual", "image"), `images` (one per input; for audiovisual mode with a
    video file, a frame of the video is used when no image is given: `frame` = "middle" (default), "first", or
    seconds), `sampling_rate` (for raw samples), `prompt`, `prompt_preset`
    (system texts, default: the processor's; see `LlavaAudioProcessor.caption_prompt`), `chunk_length_s` (default: the audio encoder's input
    length) and `stride_length_s` (overlap of consecutive windows) for long audio, `long_audio` ("chunks": one
    caption per window, `[{"chunks": [{"caption", "timestamp"}, ...]}]`; "first_window": `[{"caption"}]` of the
    first window only), `silence_threshold_db` (peak level in dBFS at or below which a window is "silence", default
    -60; None turns the check off), `preset` ("greedy" or "paper"), `max_new_tokens` and any other argument of
    `generate()` (`num_beams=3`, `do_sample=True`, ..., or a `generate_kwargs` dict), and the pipeline's own
    `batch_size`. Unknown arguments are an error.
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
        names = [None if single else _input_name(item, index, len(items)) for index, item in enumerate(items)]
        if mode == "image":
            requests = [CaptionRequest(image=item if image is None else image, name=name) for item, image, name in
                        zip(items, image_list, names, strict=True)]
        else:
            requests = [CaptionRequest(audio=item, image=image, name=name) for item, image, name in
                        zip(items, image_list, names, strict=True)]
        outputs = super().__call__(requests, **kwargs)
        return outputs[0] if single else outputs

    def _sanitize_parameters(self, mode=None, frame=None, prompt=None, prompt_preset=None, sampling_rate=None,
                             chunk_length_s=None, stride_length_s=None, long_audio=None,
                             silence_threshold_db=_NOT_GIVEN, preset=None, max_new_tokens=None, generate_kwargs=None,
                             **kwargs):
        preprocess = {k: v for k, v in dict(mode=mode, frame=frame, prompt=prompt, prompt_preset=prompt_preset,
                                             sampling_rate=sampling_rate, chunk_length_s=chunk_length_s,
                                             stride_length_s=stride_length_s, long_audio=long_audio).items()
                      if v is not None}
        if silence_threshold_db is not _NOT_GIVEN:  # None is a value: no silence check
            preprocess["silence_threshold_db"] = silence_threshold_db
        if frame is not None:
            frame_seconds(frame, 0.0)  # a frame name or time that no video could give is an error before decoding
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if long_audio is not None and long_audio not in LONG_AUDIO_POLICIES:
            raise ValueError(f"long_audio must be one of {LONG_AUDIO_POLICIES}, got {long_audio!r}")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        forward = dict(PRESETS[preset or "greedy"])
        forward.update(generate_kwargs or {})
        direct = _generation_arguments(kwargs)
        if max_new_tokens is not None:
            direct["max_new_tokens"] = max_new_tokens
        twice = sorted(set(direct) & set(generate_kwargs or {}))
        if twice:
            raise ValueError(f"{twice} given twice, directly and in generate_kwargs: pass each once")
        forward.update(direct)
        return preprocess, forward, {}

    # ---- preprocess: one request -> one model input per audio window ------------------------------------------

    def preprocess(self, request: CaptionRequest, mode="audio", frame="middle", prompt=None, prompt_preset=None,
                   sampling_rate=None, chunk_length_s=None, stride_length_s=0.0, long_audio="chunks",
                   silence_threshold_db=DEFAULT_SILENCE_THRESHOLD_DB):
        processor = self.processor
        if mode == "image":
            image = load_image(request.image, name=request.name or "image", frame=frame)
            text = processor.caption_prompt(image=True, prompt=prompt, prompt_preset=prompt_preset)
            inputs = processor(text=text, images=image, return_tensors="pt")
            yield {**inputs, "is_last": True, "timestamp": None, "silent": False}
            return

        source = AudioSource(request.audio, sampling_rate=sampling_rate, name=request.name)
        image = None
        if mode == "audiovisual":
            if request.image is None and not is_video(request.audio):
                raise ValueError(
                    "audiovisual mode needs an image: pass images=... (one per input) or a video file, whose frame "
                    "is then used"
                )
            image = load_image(request.image if request.image is not None else request.audio,
                               name=request.name or "image", frame=frame)
        text = processor.caption_prompt(image=image is not None, audio=True, prefix=image is not None, prompt=prompt,
                                        prompt_preset=prompt_preset)
        target_rate = processor.feature_extractor.sampling_rate
        channel_policy = getattr(processor.feature_extractor, "channel_policy", "mean")
        window = _window_seconds(processor.feature_extractor)
        length = chunk_length_s or window
        if length > window + 1e-6:
            raise ValueError(f"chunk_length_s={length} is longer than the audio encoder's input ({window:.2f} s), "
                             "whose feature extractor would cut the rest: use at most that")
        if source.duration <= length + 1e-6:
            windows = [(0.0, source.duration)]
        elif long_audio == "first_window":
            windows = [(0.0, length)]
        else:
            windows = source.windows(length, stride_length_s)
        chunked = len(windows) > 1
        for (start, end), native, is_last in _read_windows(source, windows):
            mono = to_mono_rate(native, source.sampling_rate, target_rate, channel_policy)
            samples = _pad_to_one_frame(mono, target_rate)
            inputs = processor(text=text, audio=samples, images=image, sampling_rate=target_rate,
                               return_tensors="pt")
            yield {**inputs, "is_last": is_last,
                   "timestamp": (round(start, 3), round(end, 3)) if chunked else None,
                   "silent": _is_silent(native, silence_threshold_db)}

    # ---- forward and postprocess --------------------------------------------------------------------------------

    def _forward(self, model_inputs, **generate_kwargs):
        is_last, timestamp = model_inputs.pop("is_last"), model_inputs.pop("timestamp")
        silent = model_inputs.pop("silent")
        prompt_length = model_inputs["input_ids"].shape[1]
        generated = self.model.generate(**model_inputs, **generate_kwargs)
        return {"tokens": generated[:, prompt_length:], "is_last": is_last, "timestamp": timestamp, "silent": silent}

    def postprocess(self, model_outputs):
        captions = []
        for output in model_outputs:
            tokens = output["tokens"]
            tokens = tokens[0] if tokens.ndim == 2 else tokens
            if output["silent"]:
                caption = {"caption": SILENCE_CAPTION, "silent": True}
            else:
                caption = {"caption": self.processor.decode(tokens, skip_special_tokens=True).strip()}
            if output["timestamp"] is not None:
                caption["timestamp"] = tuple(output["timestamp"])
            captions.append(caption)
        if captions and "timestamp" in captions[0]:
            return [{"chunks": captions}]
        return captions

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


def _generation_arguments(kwargs: dict) -> dict:
    """The keyword arguments that `generate()` takes (the fields of `GenerationConfig`, or `generation_config`);
    anything else is a mistyped or unknown argument, an error rather than silently ignored."""
    from transformers import GenerationConfig

    known = {key for key in vars(GenerationConfig()) if not key.startswith("_")} | {"generation_config"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise TypeError(
            f"unknown argument(s) {unknown} for the audio-captioning pipeline: it takes mode, images, frame, prompt, "
            "sampling_rate, chunk_length_s, stride_length_s, long_audio, silence_threshold_db, preset, "
            "max_new_tokens, generate_kwargs, batch_size and the arguments of generate() (GenerationConfig's "
            "fields, e.g. num_beams, do_sample, temperature)"
        )
    return dict(kwargs)


def _read_windows(source: AudioSource, windows: list):
    """(window, samples, is_last) for each window, read one ahead: a file that turns out truncated ends with the
    windows that decoded (a warning says where it failed), unless not even the first one did."""
    current = (windows[0], source.read(*windows[0]))
    for following in windows[1:]:
        try:
            upcoming = (following, source.read(*following))
        except TruncatedAudioError as error:
            logger.warning("%s; captioned the %.2f s that decoded", error, error.decoded_seconds)
            break
        yield (*current, False)
        current = upcoming
    yield (*current, True)


def _input_name(item, index: int, count: int) -> str:
    """How an input of a list is named in errors: its path, else its position."""
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    return f"input {index} of {count} ({type(item).__name__})"


def _pad_to_one_frame(samples, rate: int):
    """Zero-pad audio shorter than one analysis frame to one frame, as the feature extractors pad short clips
    with zero frames: a 10 ms tail is still audio, and the encoders' filterbanks would give it no frame at all."""
    shortest = math.ceil(FRAME_SECONDS * rate)
    return samples if len(samples) >= shortest else np.pad(samples, (0, shortest - len(samples)))


def _is_silent(samples, threshold_db) -> bool:
    """Whether no sample is louder than `threshold_db` dBFS (None: never)."""
    if threshold_db is None:
        return False
    return float(np.abs(samples).max()) <= 10.0 ** (threshold_db / 20.0)


def _window_seconds(feature_extractor) -> float:
    """The audio encoder's input length in seconds: Whisper's `n_samples`, else `target_length` / `max_length`
    frames of 10 ms (CAV-MAE, AST)."""
    if getattr(feature_extractor, "n_samples", None):
        return feature_extractor.n_samples / feature_extractor.sampling_rate
    frames = getattr(feature_extractor, "target_length", None) or getattr(feature_extractor, "max_length", None)
    if frames:
        return frames * 0.01
    raise ValueError("cannot tell the audio encoder's input length: pass chunk_length_s=")
