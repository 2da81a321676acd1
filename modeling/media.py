"""Media input, one set of rules for the whole project: audio, video frames, images and the file types they come in.

- Audio from whatever a user has: files (any format FFmpeg reads, video containers included), bytes, arrays with a
  sampling rate, `{"array", "sampling_rate"}` dicts, torchcodec decoders ([`AudioSource`]). Decoded window by
  window, so an hour-long file never sits in memory; checked (empty, NaN/inf) with errors that name the input.
  Never a silent substitute.
- Channels: a 2-D array's channel axis is its shorter one, of at most `MAX_CHANNELS` ([`channels_first`]); a
  multichannel clip becomes mono as a `channel_policy` says ([`downmix`]: "mean" or "first").
- Images from PIL images, paths, `datasets` image dicts or a frame of a video ([`load_image`]); a frame is named
  the same way everywhere: "middle", "first" or a time in seconds ([`frame_at`]).
- File types: `AUDIO_EXTENSIONS`, `VIDEO_EXTENSIONS`, `IMAGE_EXTENSIONS`, `MEDIA_EXTENSIONS` (audio and video).

It lives beside the model files because the remote-code pipeline and the feature extractor use it. Importing it
needs numpy and torch only; the decoders (soundfile, torchcodec, torchaudio's resampler, PIL) are imported where
they are used, as transformers does with its optional media backends.
"""

import io
import math
import os

import numpy as np
import torch
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["AUDIO_EXTENSIONS", "CHANNEL_POLICIES", "IMAGE_EXTENSIONS", "MAX_CHANNELS",
           "MEDIA_EXTENSIONS", "VIDEO_EXTENSIONS", "AudioInputError", "AudioSource", "TruncatedAudioError", "as_array",
           "channels_first", "check_channel_policy", "check_sampling_rate", "downmix", "frame_at", "frame_seconds", "is_video", "load_image",
           "media_duration",
           "pcm_to_float", "prepare_audio", "to_mono_rate"]

# Each one is decoded in the tests from a file that ffmpeg made (tests/test_batch_jobs.py)
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aiff", ".aif", ".wma", ".ac3",
                    ".mp2", ".mka", ".caf", ".au", ".wv", ".w64")
# (MPEG program and transport streams, .mpg / .ts, are not listed: their audio decodes, but torchcodec seeks their
# video frames up to half a second off, or finds none)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".flv", ".wmv", ".3gp", ".ogv")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS  # what carries sound
CHANNEL_POLICIES = ("mean", "first")
MAX_CHANNELS = 8  # the short axis of a 2-D clip is its channel axis when it is at most this long
# Below this rate a clip holds nothing above half of it (2 kHz): no speech, music or sound-event recording is stored
# so (telephone speech, the lowest common rate, is 8 kHz); such a rate is almost always a mistake (kHz for Hz, or a
# sample count), so it is warned about. The audio is still used: the encoder resamples it.
MIN_AUDIO_RATE = 4000


class AudioInputError(ValueError):
    """An audio input that cannot be used as it is; the message names the input and the fix."""


class TruncatedAudioError(AudioInputError):
    """A file that decoded up to `decoded_seconds`, then failed (truncated or corrupt after that point)."""

    def __init__(self, message: str, decoded_seconds: float):
        super().__init__(message)
        self.decoded_seconds = decoded_seconds


class AudioSource:
    """One audio input, opened for windowed reading: `duration` (s), `sampling_rate`, `read(start, end)`."""

    def __init__(self, source, sampling_rate: int | None = None, name: str | None = None):
        self.name = name or _describe(source)
        self._array = self._file = self._decoder = None
        if isinstance(source, dict):
            array = source.get("array", source.get("raw"))
            if array is None:
                if source.get("bytes"):  # datasets' undecoded Audio: the file's bytes (its path may be a bare name)
                    source = source["bytes"]
                elif source.get("path"):
                    source = source["path"]
                else:
                    raise AudioInputError(f"{self.name}: an audio dict needs 'array' and 'sampling_rate' keys, "
                                          f"got {sorted(source)}")
            else:
                source, sampling_rate = array, source.get("sampling_rate", sampling_rate)
        if isinstance(source, (np.ndarray, torch.Tensor, list)):
            if sampling_rate is None:
                raise AudioInputError(f"{self.name}: raw samples need their sampling_rate (e.g. sampling_rate=16000)")
            self._array = channels_first(pcm_to_float(as_array(source), self.name), self.name)
            self.sampling_rate = check_sampling_rate(sampling_rate, self.name)
        elif isinstance(source, (str, os.PathLike, bytes, bytearray)):
            self._open_encoded(source)
        elif type(source).__name__ == "AudioDecoder":  # a torchcodec decoder the user opened
            self._decoder = source
            self.sampling_rate = check_sampling_rate(source.metadata.sample_rate, self.name)
        else:
            raise AudioInputError(
                f"unsupported audio input of type {type(source).__name__}: pass a file path, bytes, a numpy array or "
                "torch tensor with sampling_rate=, a {'array', 'sampling_rate'} dict or a torchcodec AudioDecoder"
            )
        self.duration = self._duration()
        if self.duration <= 0:
            raise AudioInputError(f"{self.name} is empty (zero samples)")

    def _open_encoded(self, source) -> None:
        if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
            raise AudioInputError(f"audio file not found: {os.fspath(source)}")
        is_bytes = isinstance(source, (bytes, bytearray))
        if len(source) == 0 if is_bytes else os.path.isfile(source) and os.path.getsize(source) == 0:
            raise AudioInputError(f"{self.name} is empty (0 bytes): no audio to decode")
        import soundfile

        try:  # libsndfile: wav, flac, ogg... with exact sample-accurate seeking
            handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else os.fspath(source)
            self._file = soundfile.SoundFile(handle)
            self.sampling_rate = self._file.samplerate
            return
        except Exception:  # not a libsndfile format: let FFmpeg try (mp3, aac, video containers)
            pass
        from torchcodec.decoders import AudioDecoder

        encoded = bytes(source) if isinstance(source, bytearray) else source
        try:
            self._decoder = AudioDecoder(encoded)
        except Exception as error:
            raise AudioInputError(f"cannot decode audio from {self.name}: {_why_undecodable(encoded)}") from error
        self.sampling_rate = int(self._decoder.metadata.sample_rate)

    def _duration(self) -> float:
        if self._array is not None:
            return self._array.shape[1] / self.sampling_rate
        if self._file is not None:
            return self._file.frames / self.sampling_rate
        duration = _audio_stream_duration(self._decoder.metadata)
        if duration is not None:
            return duration
        return self._decoder.get_all_samples().data.shape[1] / self.sampling_rate

    def read(self, start: float = 0.0, end: float | None = None) -> np.ndarray:
        """Samples [channels, time] float32 at the native rate between `start` and `end` seconds; checked."""
        end = self.duration if end is None else min(end, self.duration)
        first, last = int(round(start * self.sampling_rate)), int(round(end * self.sampling_rate))
        try:
            if self._array is not None:
                samples = self._array[:, first:last]
            elif self._file is not None:
                self._file.seek(min(first, self._file.frames))
                samples = self._file.read(last - first, dtype="float32", always_2d=True).T
            else:  # the stream's clock may start after 0 s (MPEG transport and program streams)
                begin = self._decoder.metadata.begin_stream_seconds or 0.0
                samples = self._decoder.get_samples_played_in_range(begin + start, begin + end).data.numpy()
        except Exception as error:
            raise self._truncated(start, end) from error
        if samples.size == 0:
            if start > 0:
                raise self._truncated(start, end)
            raise AudioInputError(f"{self.name} is empty (zero samples)")
        finite = np.isfinite(samples)
        if not finite.all():
            sample = first + int(np.flatnonzero(~finite.all(axis=0))[0])  # the first bad one, in the whole input
            raise AudioInputError(f"{self.name} contains NaN or infinite samples (the first is sample {sample}, at "
                                  f"{sample / self.sampling_rate:.3f} s)")
        return samples.astype(np.float32, copy=False)

    def _truncated(self, start: float, end: float) -> TruncatedAudioError:
        return TruncatedAudioError(
            f"{self.name}: decoded {start:.2f} s of the {self.duration:.2f} s its header announces, then failed at "
            f"{start:.2f}-{end:.2f} s: the file is truncated or corrupt after that point", decoded_seconds=start)

    def windows(self, length: float, stride: float = 0.0):
        """(start, end) in seconds of windows `length` long, each overlapping the previous one by `stride`."""
        if not 0 <= stride < length:
            raise ValueError(f"stride_length_s must be in [0, chunk_length_s), got {stride} for {length}")
        count = max(1, math.ceil((self.duration - stride) / (length - stride) - 1e-9))
        return [(i * (length - stride), min(i * (length - stride) + length, self.duration)) for i in range(count)]


def prepare_audio(source, target_rate: int, name: str | None = None, channel_policy: str = "mean") -> np.ndarray:
    """Mono float32 samples at `target_rate` of a whole input (path, bytes, dict, array, decoder): channels reduced
    as `channel_policy` says, resampled when needed."""
    opened = AudioSource(source, name=name)
    return to_mono_rate(opened.read(), opened.sampling_rate, target_rate, channel_policy)


def to_mono_rate(samples: np.ndarray, rate: int, target_rate: int, channel_policy: str = "mean") -> np.ndarray:
    """[channels, time] samples made mono ([`downmix`]) and resampled to `target_rate` (torchaudio)."""
    mono = downmix(samples, channel_policy)
    if rate != target_rate:
        import torchaudio.functional as audio_functional

        mono = audio_functional.resample(torch.from_numpy(np.ascontiguousarray(mono)), rate, target_rate).numpy()
    return mono.astype(np.float32, copy=False)


def check_sampling_rate(sampling_rate, name: str = "audio input") -> int:
    """`sampling_rate` as a positive whole number of Hz, or an error naming the input."""
    try:
        valid = float(sampling_rate) > 0 and float(sampling_rate) == int(sampling_rate)
    except (TypeError, ValueError, OverflowError):
        valid = False
    if not valid:
        raise AudioInputError(f"{name}: sampling_rate must be a positive whole number of Hz (e.g. 16000), got "
                              f"{sampling_rate!r}")
    if int(sampling_rate) < MIN_AUDIO_RATE:
        logger.warning(f"{name}: sampling_rate={int(sampling_rate)} Hz is below {MIN_AUDIO_RATE} Hz, a rate no audio "
                       "recording uses: is it in kHz, or a number of samples? The rate is in Hz (e.g. 16000); the "
                       "clip is used as given")
    return int(sampling_rate)


PCM_TYPES = (np.uint8, np.int8, np.int16, np.int32)


def pcm_to_float(array: np.ndarray, name: str = "audio input") -> np.ndarray:
    """Samples as float32 in [-1, 1]: integer PCM scaled as soundfile reads files (int16 / 32768, int32 / 2**31,
    8-bit unsigned centred on 128), floats as they are; other integer types are an error."""
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.type not in PCM_TYPES:
        raise AudioInputError(f"{name} has {array.dtype} samples: pass float samples in [-1, 1] or integer PCM "
                              "(int16, int32, int8 or uint8)")
    info = np.iinfo(array.dtype)
    offset = 0 if info.min < 0 else (int(info.max) + 1) // 2  # unsigned PCM is centred on half its range
    scale = float(max(-int(info.min), offset))
    return ((array.astype(np.float64) - offset) / scale).astype(np.float32)


def as_array(samples) -> np.ndarray:
    """A numpy view of samples: tensors as their dtype (half and bfloat16 as float32), lists as float32."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu()
        return (samples.float() if samples.is_floating_point() else samples).numpy()
    if isinstance(samples, np.ndarray):
        return samples
    return np.asarray(samples, dtype=np.float32)


def _why_undecodable(encoded) -> str:
    """Why FFmpeg could not open an audio stream: an image, a media file without one, or not a media file at all."""
    from PIL import Image, UnidentifiedImageError
    from torchcodec.decoders import VideoDecoder

    try:
        with Image.open(io.BytesIO(encoded) if isinstance(encoded, bytes) else encoded) as image:
            return f"it is an image ({image.format}), not audio: pass an audio or video file"
    except (UnidentifiedImageError, OSError, ValueError):
        pass
    try:
        VideoDecoder(encoded)
    except Exception:
        return "not an audio or video file that FFmpeg can read (unknown format, or a corrupt file)"
    return "the file has no audio stream (a video without sound?)"


def channels_first(array: np.ndarray, name: str = "audio input") -> np.ndarray:
    """Samples as [channels, time]: 1-D is one channel; of a 2-D array, [channels, samples] or [samples, channels],
    the shorter axis is the channel axis, which holds at most `MAX_CHANNELS` channels."""
    if array.ndim == 1:
        return array[None]
    if array.ndim != 2:
        raise AudioInputError(f"{name} has shape {list(array.shape)}: audio must be 1-D [samples] or 2-D "
                              "[channels, samples] / [samples, channels]")
    if min(array.shape) > MAX_CHANNELS:
        raise AudioInputError(
            f"{name} is a 2-D array of shape {list(array.shape)}, read as one multichannel clip, but neither axis is "
            f"a channel axis (at most {MAX_CHANNELS} channels): pass a batch as a list of clips, not as a 2-D array"
        )
    return array if array.shape[0] <= array.shape[1] else array.T


def downmix(samples: np.ndarray, channel_policy: str = "mean") -> np.ndarray:
    """Mono [time] samples of [channels, time] ones: "mean" averages the channels, "first" keeps the first one (as
    the DALI authors' code does: its Kaldi filterbank reads channel 0)."""
    check_channel_policy(channel_policy)
    return samples[0] if channel_policy == "first" else samples.mean(axis=0)


def check_channel_policy(channel_policy: str) -> str:
    """`channel_policy` if it is one of `CHANNEL_POLICIES`, else an error listing them."""
    if channel_policy not in CHANNEL_POLICIES:
        raise ValueError(f"channel_policy must be one of {CHANNEL_POLICIES}, got {channel_policy!r}")
    return channel_policy


# ---- video frames and images ------------------------------------------------------------------------------------


def is_video(source) -> bool:
    """Whether `source` is a path to a video file (by its extension, `VIDEO_EXTENSIONS`)."""
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).lower().endswith(VIDEO_EXTENSIONS)


def frame_seconds(frame, duration: float) -> float:
    """The time in seconds that `frame` names in a video of `duration` seconds: "middle", "first", or a time in
    seconds (a number, or a string holding one)."""
    if frame == "middle":
        return duration / 2
    if frame == "first":
        return 0.0
    try:
        seconds = float(frame)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds >= 0 or math.isinf(seconds):
        raise ValueError(f'frame must be "middle", "first" or a time in seconds (0 or more), got {frame!r}')
    return seconds


def frame_at(path, frame="middle"):
    """One frame of the video at `path`, as an RGB PIL image: `frame` is "middle", "first" or a time in seconds
    (clamped to the video's stream, with a warning when past its end: one --frame serves videos of any length)."""
    from PIL import Image
    from torchcodec.decoders import VideoDecoder

    if not os.path.exists(path):
        raise ValueError(f"video file not found: {os.fspath(path)}")
    try:
        decoder = VideoDecoder(os.fspath(path))
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"cannot read a video frame from {os.fspath(path)}: {error}") from error
    metadata = decoder.metadata
    duration = metadata.duration_seconds or 0.0
    seconds = frame_seconds(frame, duration)
    # times count from the stream's start, which may be after 0 s on its clock (MPEG transport and program streams)
    begin = metadata.begin_stream_seconds or 0.0
    end = (metadata.end_stream_seconds or begin + duration) - begin
    last = max(0.0, end - 1e-3)
    if seconds > last + 1e-3:
        logger.warning(f"frame at {seconds:g} s is past the end of {os.fspath(path)} ({end:.2f} s): its last frame is "
                       "used")
    data = decoder.get_frame_played_at(begin + min(seconds, last)).data  # [3, H, W] uint8
    return Image.fromarray(data.permute(1, 2, 0).numpy())


def load_image(source, name: str = "image", frame="middle"):
    """An RGB PIL image from a PIL image, an image file's path, a video file's path (its frame at `frame`), or a
    `datasets` image dict (`{"bytes"}` or `{"path"}`). What cannot be read is a ValueError naming the input as `name`."""
    from PIL import Image

    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, dict):  # datasets' undecoded Image feature: the file's bytes, or its path
        source = io.BytesIO(source["bytes"]) if source.get("bytes") else source.get("path")
    if is_video(source):
        return frame_at(source, frame)
    if isinstance(source, (str, os.PathLike)) and not os.path.exists(source):
        raise ValueError(f"{name}: image file not found: {os.fspath(source)}")
    if not isinstance(source, (str, os.PathLike, io.IOBase)):
        raise ValueError(f"{name}: unsupported image input of type {type(source).__name__}: pass a PIL image, an "
                         "image or video file's path, or a datasets image dict")
    try:
        return Image.open(source).convert("RGB")
    except OSError as error:
        raise ValueError(f"{name}: cannot read an image from {source!r}: {error}") from error


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"audio input ({type(source).__name__})"


def media_duration(source) -> float | None:
    """The duration in seconds of a media file from its header (no decoding), None when it cannot be read so."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    try:
        import soundfile

        return float(soundfile.info(os.fspath(source)).duration)
    except Exception:  # not a libsndfile format: FFmpeg's container metadata
        pass
    try:
        from torchcodec.decoders import AudioDecoder

        return _audio_stream_duration(AudioDecoder(os.fspath(source)).metadata)
    except Exception:
        return None


def _audio_stream_duration(metadata) -> float | None:
    """The duration in seconds of the audio stream torchcodec's `metadata` describes, None when unknown. Without a
    duration in the stream's header, torchcodec gives the container's (mkv, webm), which counts from 0 s on the
    stream's clock, not from the stream's start."""
    if not metadata.duration_seconds:
        return None
    if metadata.duration_seconds_from_header is None:
        return float(metadata.duration_seconds) - (metadata.begin_stream_seconds or 0.0)
    return float(metadata.duration_seconds)
