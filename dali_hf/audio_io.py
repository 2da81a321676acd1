"""Audio input: decode, check, downmix and resample, with errors that name the input. Never a silent substitute."""

import os

import numpy as np
import torch

__all__ = ["AudioInputError", "load_audio", "prepare_audio"]


class AudioInputError(ValueError):
    """An audio input that cannot be used as it is; the message names the input and the fix."""


def load_audio(source) -> tuple[np.ndarray, int]:
    """(samples [channels, time] float32, sampling rate) from a path or a {"array", "sampling_rate"} dict."""
    if isinstance(source, dict):
        if "array" not in source or "sampling_rate" not in source:
            if source.get("path"):
                return load_audio(source["path"])
            raise AudioInputError(f"audio dict needs 'array' and 'sampling_rate' keys, got {sorted(source)}")
        array = np.asarray(source["array"], dtype=np.float32)
        return (array[None] if array.ndim == 1 else array), int(source["sampling_rate"])
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise AudioInputError(f"audio file not found: {path}")
        return _decode_file(path)
    raise AudioInputError(f"unsupported audio input of type {type(source).__name__}: pass a path or "
                          "{'array': ..., 'sampling_rate': ...}")


def prepare_audio(source, target_rate: int, name: str = "audio") -> np.ndarray:
    """Mono float32 samples at `target_rate`: channels averaged, resampled with torchaudio when needed."""
    samples, rate = load_audio(source)
    if samples.size == 0:
        raise AudioInputError(f"{name} is empty (zero samples)")
    if not np.isfinite(samples).all():
        raise AudioInputError(f"{name} contains NaN or infinite samples")
    mono = samples.mean(axis=0)
    if rate != target_rate:
        import torchaudio.functional as AF

        mono = AF.resample(torch.from_numpy(mono), rate, target_rate).numpy()
    return mono.astype(np.float32)


def _decode_file(path: str) -> tuple[np.ndarray, int]:
    """soundfile for plain audio files (fast, exact); torchcodec (FFmpeg) for the rest: mp3, video containers."""
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return data.T, rate
    except Exception:  # not a format libsndfile reads: let FFmpeg try
        pass
    try:
        from torchcodec.decoders import AudioDecoder

        samples = AudioDecoder(path).get_all_samples()
    except Exception as error:
        raise AudioInputError(f"cannot decode audio from {path}: {error}") from error
    return samples.data.numpy().astype(np.float32), int(samples.sample_rate)
