"""Audio from whatever a user has: files (any format FFmpeg reads, video containers included), bytes, arrays with a
sampling rate, `{"array", "sampling_rate"}` dicts, torchcodec decoders. Decoded window by window, so an hour-long
file never sits in memory; checked (empty, NaN/inf) with errors that name the input. Never a silent substitute.

Kept beside the model files (standard library, numpy, torch, torchaudio, soundfile and torchcodec only), so the
remote-code pipeline uses it too.
"""

import io
import math
import os

import numpy as np
import torch

__all__ = ["AudioInputError", "AudioSource", "TruncatedAudioError", "as_array", "check_sampling_rate",
           "pcm_to_float", "to_mono_rate"]


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
            self._array = _as_channels_first(pcm_to_float(as_array(source), self.name), self.name)
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
        metadata = self._decoder.metadata
        if metadata.duration_seconds:
            return float(metadata.duration_seconds)
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
            else:
                samples = self._decoder.get_samples_played_in_range(start, end).data.numpy()
        except Exception as error:
            raise self._truncated(start, end) from error
        if samples.size == 0:
            if start > 0:
                raise self._truncated(start, end)
            raise AudioInputError(f"{self.name} is empty (zero samples)")
        if not np.isfinite(samples).all():
            raise AudioInputError(f"{self.name} contains NaN or infinite samples (near {start:.2f} s)")
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


def to_mono_rate(samples: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Average the channels of [channels, time] samples and resample to `target_rate` (torchaudio)."""
    mono = samples.mean(axis=0)
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
    """Why FFmpeg could not open an audio stream: a media file without one, or not a media file at all."""
    from torchcodec.decoders import VideoDecoder

    try:
        VideoDecoder(encoded)
    except Exception:
        return "not an audio or video file that FFmpeg can read (unknown format, or a corrupt file)"
    return "the file has no audio stream (a video without sound?)"


def _as_channels_first(array: np.ndarray, name: str) -> np.ndarray:
    """1-D -> [1, time]; 2-D: the short axis (at most 8) is the channel axis."""
    if array.ndim == 1:
        return array[None]
    if array.ndim == 2:
        return array if array.shape[0] <= array.shape[1] else array.T
    raise AudioInputError(f"{name}: audio must be 1-D (samples) or 2-D (channels x samples), got {array.shape}")


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"audio input ({type(source).__name__})"
