"""Audio input for the library side (collators, datasets): decode, check, downmix, resample.

The implementation lives in `modeling/audio_decoding.py`, beside the model files, because the remote-code pipeline
needs it too; this module is its library-facing name.
"""

import numpy as np

from .modeling.audio_decoding import AudioInputError, AudioSource, to_mono_rate

__all__ = ["AudioInputError", "AudioSource", "load_audio", "prepare_audio"]


def load_audio(source) -> tuple[np.ndarray, int]:
    """(samples [channels, time] float32, sampling rate) of a whole input (path, bytes, dict, decoder)."""
    opened = AudioSource(source)
    return opened.read(), opened.sampling_rate


def prepare_audio(source, target_rate: int, name: str | None = None) -> np.ndarray:
    """Mono float32 samples at `target_rate` of a whole input: channels averaged, resampled when needed."""
    opened = AudioSource(source, name=name)
    return to_mono_rate(opened.read(), opened.sampling_rate, target_rate)
