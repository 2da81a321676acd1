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
    for result in captioner(KeyDataset(dataset, "audio"), batch_size=16):  # streamed, in input order
        ...
    captioner(files, batch_size=8, on_error="return")   # a bad file gives [{"error": "..."}], the rest are captioned

Decoding is greedy by default (reproducible); `preset="paper"` samples like the reference code (temperature 0.2,
one beam, 64 new tokens). Long audio (longer than the audio encoder's window) is read window by window, so memory
stays bounded whatever the length, and gives one caption per window with its timestamp, in the shape of the `chunks`
of transformers' speech-recognition pipeline (`caption` in place of `text`); no joined caption is made up from them.
No caption covers less than half a window: a last window shorter than that ends at the end of the audio and is a full
window long, overlapping the one before. Silent audio (no sample above `silence_threshold_db`, -60 dBFS by default)
is not described: its caption is "silence" and its result carries `"silent": True`.

The pipeline is the package's one captioning engine (the `caption`, `pseudo-caption` and `evaluate` commands and
the demo go through it). Its contract:

- Inputs: one input (a path, bytes, an array or tensor with `sampling_rate=`, an `{"array", "sampling_rate"}`
  dict, a torchcodec decoder, a PIL image in image mode, a row `{"audio": ..., "image": ...}`) gives its result;
  a list or tuple gives the list of results; a `datasets.Dataset` (its rows, read by their `audio` and `image`
  columns), a torch `Dataset` such as `KeyDataset(dataset, "audio")`, a generator or any other iterable is
  consumed lazily and gives an iterator of results, as transformers' pipelines do. Results always come in input
  order, whatever `batch_size` (windows of long audio are batched together with the other inputs' windows).
- Results: each input's result is a list of one dict, `{"caption"}` (with `"silent": True` for silence),
  `{"chunks": [{"caption", "timestamp"}, ...]}` for audio longer than the window, or `{"error": "<type>: <why>"}`.
  A file that decoded only in part (truncated or corrupt after some point) is captioned from what decoded, and its
  dict carries `"partial": {"decoded_s": ..., "duration_s": ...}` (seconds decoded, seconds its header announces).
- Errors: `on_error="raise"` (default) raises the first input's error, which names the input; `on_error="return"`
  makes a failed input's result `[{"error": ...}]` and captions every other input as usual (a batch never fails as a
  whole for one input). Errors of the model itself are raised either way.
- Batching: inputs are prepared one by one (decoded, resampled, featurized, `num_workers=1` decodes ahead in a
  worker process), their prompts left-padded into batches of `batch_size`, generated together and decoded.
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

from .media import (
    AudioInputError,
    AudioSource,
    TruncatedAudioError,
    frame_seconds,
    is_video,
    load_image,
    to_mono_rate,
)
from .vocabulary import DECODING_PRESETS, LONG_AUDIO_POLICIES, MODES

logger = logging.get_logger(__name__)

__all__ = ["AudioCaptioningPipeline", "CaptionRequest", "LONG_AUDIO_POLICIES", "ON_ERROR", "PRESETS", "SILENCE_CAPTION",
           "caption_windows", "captioning_engine"]

# the decoding presets (`preset=`), each with one beam and 64 new tokens
PRESETS = {name: {**sampling, "num_beams": 1, "max_new_tokens": 64} for name, sampling in DECODING_PRESETS.items()}
SILENCE_CAPTION = "silence"
DEFAULT_SILENCE_THRESHOLD_DB = -60.0
FRAME_SECONDS = 0.025  # one analysis frame of the filterbank encoders: shorter audio gives no frame
_NOT_GIVEN = object()


@dataclass
class CaptionRequest:
    """One input of the pipeline: its audio and, for audiovisual or image captioning, its image; `name` says which
    input it is in error messages; `error`, an input that could not even be read from its dataset (raised, or
    returned with `on_error="return"`, when its turn comes)."""

    audio: Any = None
    image: Any = None
    name: str | None = None
    error: Exception | None = None


ON_ERROR = ("raise", "return")
# a window that decodes this much shorter than asked is where the file stops decoding (mp3 and other frame-based
# codecs can end a few ms before their announced length; more than this is a truncated or corrupt file)
PARTIAL_TOLERANCE_S = 0.05
# the keys of a prepared window that are not model inputs: they travel beside the tensors to `postprocess`
_WINDOW_KEYS = ("is_last", "timestamp", "silent", "partial", "error")


class AudioCaptioningPipeline(ChunkPipeline):
    """Audio (and audiovisual, and image) captioning with [`LlavaAudioForConditionalGeneration`].

    Call arguments: `mode` ("audio", "audiovisual", "image"), `images` (one per input; for audiovisual mode with a
    video file, a frame of the video is used when no image is given: `frame` = "middle" (default), "first", or
    seconds), `sampling_rate` (for raw samples), `prompt`, `prompt_preset`
    (system texts, default: the processor's; see `LlavaAudioProcessor.caption_prompt`), `prefix` (whether the
    learned prefix follows the audio / image tokens; default: in audiovisual mode only, as DALI's pseudo-captions
    are made), `chunk_length_s` (default: the audio encoder's input length) and `stride_length_s` (overlap of
    consecutive windows) for long audio, `long_audio` ("chunks": one caption per window, `[{"chunks": [{"caption",
    "timestamp"}, ...]}]`; "first_window": `[{"caption"}]` of the first window only), `silence_threshold_db` (peak
    level in dBFS at or below which a window is "silence", default -60; None turns the check off), `on_error`
    ("raise" or "return", see the module docstring), `preset` ("greedy" or "paper"), `max_new_tokens` and any
    other argument of `generate()` (`num_beams=3`, `do_sample=True`, ..., or a `generate_kwargs` dict), and the
    pipeline's own `batch_size` and `num_workers`. Unknown arguments are an error.
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
        image_mode = kwargs.get("mode", "audio") == "image"
        if image_mode and inputs is None:
            inputs, images = images, None
        if not _is_collection(inputs):
            (image,) = _image_list(images, 1)
            (result,) = super().__call__([_request(inputs, image, None, image_mode)], **kwargs)
            return result
        if isinstance(inputs, (list, tuple)):
            items = list(inputs)
            image_list = _image_list(images, len(items))
            requests = [_request(item, image, _input_name(item, index, len(items)), image_mode)
                        for index, (item, image) in enumerate(zip(items, image_list, strict=True))]
            return super().__call__(requests, **kwargs)
        # datasets, generators and other iterables: read one input at a time, results as an iterator
        count = len(inputs) if hasattr(inputs, "__len__") else None
        image_iterable = _image_list(images, count) if images is not None and count is not None else images
        return super().__call__(_lazy_requests(inputs, image_iterable, image_mode), **kwargs)

    def _sanitize_parameters(self, mode=None, frame=None, prompt=None, prompt_preset=None, prefix=None,
                             sampling_rate=None, chunk_length_s=None, stride_length_s=None, long_audio=None,
                             silence_threshold_db=_NOT_GIVEN, on_error=None, preset=None, max_new_tokens=None,
                             generate_kwargs=None, **kwargs):
        preprocess = {k: v for k, v in dict(mode=mode, frame=frame, prompt=prompt, prompt_preset=prompt_preset,
                                             prefix=prefix, sampling_rate=sampling_rate,
                                             chunk_length_s=chunk_length_s, stride_length_s=stride_length_s,
                                             long_audio=long_audio, on_error=on_error).items()
                      if v is not None}
        if silence_threshold_db is not _NOT_GIVEN:  # None is a value: no silence check
            preprocess["silence_threshold_db"] = silence_threshold_db
        if frame is not None:
            frame_seconds(frame, 0.0)  # a frame name or time that no video could give is an error before decoding
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if long_audio is not None and long_audio not in LONG_AUDIO_POLICIES:
            raise ValueError(f"long_audio must be one of {LONG_AUDIO_POLICIES}, got {long_audio!r}")
        if on_error is not None and on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
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

    def preprocess(self, request: CaptionRequest, on_error="raise", **options):
        """The model inputs of each window of `request` (one for an image or short audio); with `on_error="return"`,
        an input that cannot be prepared ends with an item holding its error instead of raising."""
        try:
            yield from self._prepare(request, **options)
        except Exception as error:
            if on_error == "raise":
                raise
            yield {"error": f"{type(error).__name__}: {error}", "is_last": True, "timestamp": None, "silent": False,
                   "partial": None}

    def _prepare(self, request: CaptionRequest, mode="audio", frame="middle", prompt=None, prompt_preset=None,
                 prefix=None, sampling_rate=None, chunk_length_s=None, stride_length_s=0.0, long_audio="chunks",
                 silence_threshold_db=DEFAULT_SILENCE_THRESHOLD_DB):
        processor = self.processor
        if request.error is not None:
            raise request.error
        if mode == "image":
            image = load_image(request.image, name=request.name or "image", frame=frame)
            text = processor.caption_prompt(image=True, prefix=bool(prefix), prompt=prompt, prompt_preset=prompt_preset)
            inputs = processor(text=text, images=image, return_tensors="pt")
            yield {**inputs, "is_last": True, "timestamp": None, "silent": False, "partial": None, "error": None}
            return

        source = AudioSource(request.audio, sampling_rate=sampling_rate, name=request.name)
        image = None
        if mode == "audiovisual":
            if request.image is None and not is_video(request.audio):
                raise ValueError(
                    "audiovisual mode needs an image, and this input is audio alone: give a video file (its frame "
                    "is used), pass images=... (one per input) in Python, or caption it in audio mode (--mode audio "
                    "for dali-hf caption)"
                )
            image = load_image(request.image if request.image is not None else request.audio,
                               name=request.name or "image", frame=frame)
        text = processor.caption_prompt(image=image is not None, audio=True,
                                        prefix=image is not None if prefix is None else prefix, prompt=prompt,
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
            windows = caption_windows(source, length, stride_length_s)
        chunked = len(windows) > 1
        for (start, end), native, is_last, partial in _read_windows(source, windows):
            mono = to_mono_rate(native, source.sampling_rate, target_rate, channel_policy)
            samples = _pad_to_one_frame(mono, target_rate)
            inputs = processor(text=text, audio=samples, images=image, sampling_rate=target_rate,
                               return_tensors="pt")
            yield {**inputs, "is_last": is_last,
                   "timestamp": (round(start, 3), round(end, 3)) if chunked else None,
                   "silent": _is_silent(native, silence_threshold_db), "partial": partial, "error": None}

    # ---- forward and postprocess --------------------------------------------------------------------------------

    def _forward(self, model_inputs, **generate_kwargs):
        single = not isinstance(model_inputs["is_last"], list)  # batch_size=1 gives the window itself
        batch = self._collate([model_inputs]) if single else model_inputs
        rows = [i for i, error in enumerate(batch["error"]) if error is None]
        tokens = [None] * len(batch["error"])
        if rows:
            inputs = batch["model_inputs"]
            prompt_length = inputs["input_ids"].shape[1]
            generated = self.model.generate(**inputs, **generate_kwargs)[:, prompt_length:]
            for row, generated_row in zip(rows, generated, strict=True):
                tokens[row] = generated_row
        outputs = {"tokens": tokens, **{key: batch[key] for key in _WINDOW_KEYS}}
        return {key: value[0] for key, value in outputs.items()} if single else outputs

    def postprocess(self, model_outputs):
        errors = [output["error"] for output in model_outputs if output.get("error")]
        if errors:
            return [{"error": errors[0]}]
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
        partial = model_outputs[-1].get("partial")
        result = {"chunks": captions} if "timestamp" in captions[0] else captions[0]
        if partial:
            result["partial"] = dict(partial)
        return [result]

    # ---- batching: left-padded prompts, whatever the keys ----------------------------------------------------

    def get_iterator(self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        dataset = PipelineChunkIterator(inputs, self.preprocess, preprocess_params)
        collate = (lambda items: items[0]) if batch_size == 1 else self._collate
        loader = DataLoader(dataset, num_workers=min(num_workers or 0, 1), batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelinePackIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)

    def _collate(self, items: list[dict]) -> dict:
        """Windows as one batch: `model_inputs` holds the tensors of the windows that were prepared (prompts padded
        on the left), every other key a list with one entry per window (`error` set where preparing failed)."""
        batch = {key: [item[key] for item in items] for key in _WINDOW_KEYS}
        prepared = [{k: v for k, v in item.items() if k not in _WINDOW_KEYS} for item in items
                    if item["error"] is None]
        batch["model_inputs"] = self._pad(prepared) if prepared else {}
        return batch

    def _pad(self, items: list[dict]) -> dict:
        pad_id = self.processor.tokenizer.pad_token_id
        length = max(item["input_ids"].shape[1] for item in items)
        batch = {}
        for key in items[0]:
            values = [item[key] for item in items]
            if key in ("input_ids", "attention_mask"):
                fill = pad_id if key == "input_ids" else 0
                batch[key] = torch.cat([torch.nn.functional.pad(v, (length - v.shape[1], 0), value=fill)
                                        for v in values])
            else:
                batch[key] = torch.cat(values)
        return batch


def captioning_engine(model, processor) -> AudioCaptioningPipeline:
    """The pipeline around a model and processor in memory (while training, in the demo), left where the model is:
    its device, or its accelerate device map."""
    on_map = getattr(model, "hf_device_map", None) is not None
    return AudioCaptioningPipeline(model=model, processor=processor, device=None if on_map else model.device)


def caption_windows(source: AudioSource, length: float, stride: float = 0.0) -> list[tuple[float, float]]:
    """(start, end) seconds of the windows that long audio is captioned in: `length` long, each overlapping the
    previous one by `stride`; a last window shorter than half of `length` is moved back to end at the end of the
    audio, a full window long (overlapping the one before more), so that no caption describes a sliver of audio."""
    windows = source.windows(length, stride)
    start, end = windows[-1]
    if len(windows) > 1 and end - start < length / 2 - 1e-9:
        windows[-1] = (max(0.0, source.duration - length), source.duration)
    return windows


def _is_collection(inputs) -> bool:
    """Whether `inputs` holds several inputs (a list, a dataset, a generator, an iterable) rather than being one."""
    if isinstance(inputs, (list, tuple)):
        return True
    if inputs is None or isinstance(inputs, (str, os.PathLike, bytes, bytearray, dict, np.ndarray, torch.Tensor,
                                             CaptionRequest)):
        return False
    if type(inputs).__name__ == "AudioDecoder" or type(inputs).__module__.startswith("PIL."):
        return False
    return isinstance(inputs, torch.utils.data.Dataset) or hasattr(inputs, "__iter__")


def _is_row(item) -> bool:
    """A dataset row (`{"audio": ..., "image": ...}`), as opposed to an audio dict (`{"array", "sampling_rate"}`,
    `{"bytes"}` or `{"path"}`)."""
    return isinstance(item, dict) and ("audio" in item or "image" in item) and not ({"array", "raw"} & set(item))


def _request(item, image, name, image_mode: bool) -> CaptionRequest:
    if isinstance(item, CaptionRequest):
        return item
    if _is_row(item):
        image = item.get("image") if image is None else image
        item = item.get("image") if image_mode else item.get("audio")
    if image_mode:
        return CaptionRequest(image=item if image is None else image, name=name)
    return CaptionRequest(audio=item, image=image, name=name)


def _image_list(images, count: int) -> list:
    if images is None:
        return [None] * count
    image_list = list(images) if _is_collection(images) else [images]
    if len(image_list) != count:
        raise ValueError(f"got {len(image_list)} images for {count} inputs: pass one image per input")
    return image_list


def _lazy_requests(inputs, images, image_mode: bool):
    """Requests made one at a time from a dataset, generator or iterable (and its images, an iterable too)."""
    indexed = hasattr(inputs, "__len__") and hasattr(inputs, "__getitem__")  # datasets: row by row, by index
    items = (_read_item(inputs, index) for index in range(len(inputs))) if indexed else iter(inputs)
    image_items = iter(images) if images is not None else None
    for index, item in enumerate(items):
        image = None
        if image_items is not None:
            image = next(image_items, _NOT_GIVEN)
            if image is _NOT_GIVEN:
                raise ValueError(f"the images ran out at input {index}: pass one image per input")
        if isinstance(item, _Unreadable):
            yield CaptionRequest(name=f"input {index}", error=item.error)
        else:
            yield _request(item, image, _input_name(item, index, None), image_mode)


@dataclass
class _Unreadable:
    error: Exception


def _read_item(dataset, index: int):
    """Item `index` of a dataset, or what kept it from being read (a row whose file the dataset cannot decode)."""
    try:
        return dataset[index]
    except Exception as error:
        return _Unreadable(AudioInputError(
            f"input {index}: the dataset could not read it ({type(error).__name__}: {error}); with "
            "datasets.Audio(decode=False) on its audio column, the pipeline decodes the file and says what is wrong"))


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
    """(window, samples, is_last, partial) for each window, read one ahead. A file that stops decoding (a read that
    fails, or a window that comes back shorter than asked) ends with the window where it stopped, whose `partial`
    is `{"decoded_s", "duration_s"}` (a warning says so too); `partial` is None everywhere else."""
    current = _read(source, windows[0])
    for following in windows[1:]:
        if current[2] is not None:
            break
        try:
            upcoming = _read(source, following)
        except TruncatedAudioError as error:
            current = (*current[:2], _partial(source, error.decoded_seconds))
            break
        yield (*current[:2], False, None)
        current = upcoming
    window, samples, partial = current
    if partial is not None:
        logger.warning("%s: decoded %.2f s of the %.2f s its header announces, then failed: the file is truncated or "
                       "corrupt after that point; captioned what decoded", source.name, partial["decoded_s"],
                       partial["duration_s"])
    yield window, samples, True, partial


def _read(source: AudioSource, window: tuple[float, float]):
    """(window, samples, partial): `partial` set, and the window's end moved to where decoding stopped, when the
    window comes back shorter than asked by more than `PARTIAL_TOLERANCE_S`."""
    start, end = window
    samples = source.read(start, end)
    decoded = samples.shape[1] / source.sampling_rate
    if end - start - decoded > PARTIAL_TOLERANCE_S:
        return (start, start + decoded), samples, _partial(source, start + decoded)
    return window, samples, None


def _partial(source: AudioSource, decoded_seconds: float) -> dict:
    return {"decoded_s": round(decoded_seconds, 3), "duration_s": round(source.duration, 3)}


def _input_name(item, index: int, count: int | None) -> str:
    """How an input of a list or stream is named in errors: its path, else its position."""
    if _is_row(item):
        item = item.get("audio", item.get("image"))
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, dict) and isinstance(item.get("path"), str):
        return item["path"]
    of = f" of {count}" if count is not None else ""
    return f"input {index}{of} ({type(item).__name__})"


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
