"""Feature extractor of the CAV-MAE audio encoder: Kaldi log-mel filterbanks with the reference's settings."""

import numbers

import numpy as np
import torch
from transformers import BatchFeature, SequenceFeatureExtractor

from .media import as_array, channels_first, check_channel_policy, downmix, pcm_to_float

__all__ = ["CavMaeFeatureExtractor"]

WINDOW_SECONDS = 0.025  # Kaldi's default frame length, used by the reference code


class CavMaeFeatureExtractor(SequenceFeatureExtractor):
    r"""
    Turns waveforms into the input of [`CavMaeAudioModel`], exactly as the CAV-MAE / DALI reference code does:
    mean removal, `torchaudio.compliance.kaldi.fbank` (htk_compat, no energy, Hanning window of 25 ms, 10 ms
    shift, dither 0, `num_mel_bins` bins), zero padding or cutting to `target_length` frames, then
    normalisation `(fbank - norm_mean) / norm_std`. As in the reference, padding frames are zeros *before*
    normalisation.

    Input clips may be mono or multichannel and at any sampling rate: multichannel clips are reduced to
    one channel as `channel_policy` says, then resampled to `sampling_rate` with `torchaudio.functional.resample`. Integer PCM is scaled to
    [-1, 1] as soundfile reads files (int16 / 32768, ...). A clip shorter than one 25 ms window is zero-padded to
    one window (one frame).

    Args:
        num_mel_bins (`int`, *optional*, defaults to 128):
            Mel bins of the filterbank.
        target_length (`int`, *optional*, defaults to 1024):
            Frames per clip after padding or cutting (1024 frames = 10.24 s).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Rate the filterbank is computed at.
        norm_mean (`float`, *optional*, defaults to -5.081):
            Mean subtracted from the filterbank (the DALI reference's value).
        norm_std (`float`, *optional*, defaults to 4.4849):
            Standard deviation the filterbank is divided by.
        feature_size (`int`, *optional*, defaults to 1):
            Values per input sample after downmixing (mono), as in `ASTFeatureExtractor`.
        padding_value (`float`, *optional*, defaults to 0.0):
            Filterbank value of padding frames, before normalisation.
        channel_policy (`str`, *optional*, defaults to `"mean"`):
            How a multichannel clip becomes mono: `"mean"` averages the channels, `"first"` keeps the first one, as
            the DALI authors' code does (its Kaldi fbank reads channel 0).
    """

    model_input_names = ["input_features", "input_features_mask"]

    def __init__(
        self,
        num_mel_bins: int = 128,
        target_length: int = 1024,
        sampling_rate: int = 16000,
        norm_mean: float = -5.081,
        norm_std: float = 4.4849,
        feature_size: int = 1,
        padding_value: float = 0.0,
        channel_policy: str = "mean",
        **kwargs,
    ):
        check_channel_policy(channel_policy)
        super().__init__(
            feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs
        )
        self.num_mel_bins = num_mel_bins
        self.target_length = target_length
        self.norm_mean = norm_mean
        self.norm_std = norm_std
        self.channel_policy = channel_policy

    def __call__(
        self,
        raw_audio,
        sampling_rate: int | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ) -> BatchFeature:
        """Compute the filterbanks of one clip or a batch of clips.

        Args:
            raw_audio (`np.ndarray`, `torch.Tensor`, `list[float]` or a list of those):
                One clip, or a batch as a list (or tuple) of clips. A clip is 1-D (mono) or 2-D, [channels,
                samples] or [samples, channels]: the shorter axis is the channel axis, and it may have at most
                8 entries (so a 2-D array is never read as a batch: pass a batch as a list).
            sampling_rate (`int`):
                Sampling rate of `raw_audio`, required. Other rates than `self.sampling_rate` are resampled.
            return_tensors (`str`, *optional*):
                `"pt"` or `"np"`; lists of arrays when not given.
            **kwargs:
                Options that processors pass to every audio feature extractor (`padding`, `truncation`,
                `max_length`, `return_attention_mask`...): ignored, the output always has `target_length`
                frames and a mask.

        Returns:
            [`BatchFeature`] with `input_features` [batch, target_length, num_mel_bins] (float32) and
            `input_features_mask` [batch, target_length] (1 on frames of the clip, 0 on padding).
        """
        if sampling_rate is None:
            raise ValueError(
                f"{type(self).__name__} needs the sampling rate of the audio: pass sampling_rate= (e.g. "
                "16000); audio at another rate than the expected one is resampled, never silently misread."
            )
        if sampling_rate <= 0 or sampling_rate != int(sampling_rate):
            raise ValueError(f"sampling_rate must be a positive whole number of Hz, got {sampling_rate}.")
        clips = raw_audio if _is_batch(raw_audio) else [raw_audio]
        extracted = [self._extract(clip, int(sampling_rate), i) for i, clip in enumerate(clips)]
        return BatchFeature(
            {"input_features": [f for f, _ in extracted], "input_features_mask": [m for _, m in extracted]},
            tensor_type=return_tensors,
        )

    def _extract(self, clip, sampling_rate: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        import torchaudio  # here, so that loading the feature extractor needs torch only

        array = as_array(clip)
        if array.size == 0:
            raise ValueError(f"Audio clip {index} is empty: there is nothing to compute features from.")
        samples = pcm_to_float(array, f"Audio clip {index}")
        if not np.isfinite(samples).all():
            raise ValueError(
                f"Audio clip {index} holds non-finite samples (NaN or inf): decode or clean the audio first."
            )
        mono = downmix(channels_first(samples, f"Audio clip {index}"), self.channel_policy)
        waveform = torch.from_numpy(np.ascontiguousarray(mono, dtype=np.float32))
        if sampling_rate != self.sampling_rate:
            waveform = torchaudio.functional.resample(waveform, sampling_rate, self.sampling_rate)
        # a clip shorter than one analysis window gives no frame: zero-pad it to one (after mean removal), as
        # the frames missing from any short clip are zeros
        window = int(WINDOW_SECONDS * self.sampling_rate)
        centred = torch.nn.functional.pad(waveform - waveform.mean(), (0, max(0, window - waveform.numel())))
        fbank = torchaudio.compliance.kaldi.fbank(
            centred.unsqueeze(0),
            htk_compat=True,
            sample_frequency=self.sampling_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=self.num_mel_bins,
            dither=0.0,
            frame_shift=10,
        )
        frames = min(fbank.shape[0], self.target_length)
        padded = torch.full((self.target_length, self.num_mel_bins), float(self.padding_value))
        padded[:frames] = fbank[:frames]
        mask = np.zeros(self.target_length, dtype=np.int32)
        mask[:frames] = 1
        return ((padded - self.norm_mean) / self.norm_std).numpy(), mask


def _is_batch(raw_audio) -> bool:
    return isinstance(raw_audio, (list, tuple)) and not all(isinstance(x, numbers.Real) for x in raw_audio)
