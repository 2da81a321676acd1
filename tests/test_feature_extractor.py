"""CavMaeFeatureExtractor against the reference loader's steps (torchaudio's Kaldi fbank): padding and cutting,
channels and resampling, clips shorter than one frame, integer PCM, errors, save and load."""

import numpy as np
import pytest
import torch
import torchaudio
from transformers import AutoFeatureExtractor

from dali_hf import CavMaeFeatureExtractor
from dali_hf.testing import random_clip


def reference_features(waveform: torch.Tensor, num_mel_bins=128, target_length=1024) -> torch.Tensor:
    """The reference loader's steps on a mono 16 kHz float32 waveform: mean removal, Kaldi fbank, zero padding
    of the fbank (ZeroPad2d) or cutting, normalisation."""
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(
        waveform.unsqueeze(0),
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10,
    )
    pad = target_length - fbank.shape[0]
    fbank = torch.nn.ZeroPad2d((0, 0, 0, pad))(fbank) if pad > 0 else fbank[:target_length]
    return (fbank - (-5.081)) / 4.4849


def test_feature_extractor_matches_kaldi_fbank():
    extractor = CavMaeFeatureExtractor()
    short, long = random_clip(0, seconds=1.0), random_clip(1, seconds=12.0)
    out = extractor([short, torch.from_numpy(long)], sampling_rate=16000, return_tensors="pt")
    assert out["input_features"].shape == (2, 1024, 128) and out["input_features"].dtype == torch.float32
    assert torch.equal(out["input_features"][0], reference_features(torch.from_numpy(short)))
    assert torch.equal(out["input_features"][1], reference_features(torch.from_numpy(long)))
    frames = 1 + (16000 - 400) // 160  # 98 frames in one second
    assert out["input_features_mask"][0].tolist() == [1] * frames + [0] * (1024 - frames)
    assert out["input_features_mask"][1].all()

    # 44.1 kHz stereo, either layout: averaged over channels, then resampled to 16 kHz
    stereo = np.stack([random_clip(2, rate=44100), random_clip(3, rate=44100)])
    mono = torchaudio.functional.resample(torch.from_numpy(stereo).mean(0), 44100, 16000)
    for layout in (stereo, stereo.T):
        features = extractor(layout, sampling_rate=44100, return_tensors="pt")["input_features"]
        assert torch.equal(features[0], reference_features(mono))

    # processor options are accepted and leave the output as it is
    again = extractor(
        [short, long.tolist()],
        sampling_rate=16000,
        return_tensors="pt",
        padding="longest",
        truncation=False,
        max_length=10,
        return_attention_mask=False,
    )
    assert all(torch.equal(again[key], out[key]) for key in out)


def test_feature_extractor_errors_and_round_trip(tmp_path):
    extractor = CavMaeFeatureExtractor(num_mel_bins=32, target_length=64)
    clip = random_clip(0, seconds=0.5)
    with pytest.raises(ValueError, match="sampling_rate="):
        extractor(clip)
    with pytest.raises(ValueError, match="clip 1 is empty"):
        extractor([clip, np.zeros(0, np.float32)], sampling_rate=16000)
    with pytest.raises(ValueError, match="clip 0 holds non-finite samples"):
        extractor(np.where(np.arange(clip.size) == 7, np.nan, clip), sampling_rate=16000)
    with pytest.raises(ValueError, match="pass a batch as a list of clips"):
        extractor(np.stack([clip] * 16), sampling_rate=16000)

    extractor.save_pretrained(tmp_path)
    loaded = AutoFeatureExtractor.from_pretrained(tmp_path)
    assert type(loaded) is CavMaeFeatureExtractor and loaded.to_dict() == extractor.to_dict()
    expected = extractor(clip, sampling_rate=16000, return_tensors="np")["input_features"]
    assert np.array_equal(loaded(clip, sampling_rate=16000, return_tensors="np")["input_features"], expected)


def test_short_clips_are_padded_to_one_frame_and_integer_pcm_is_scaled(tmp_path):
    """A clip shorter than one 25 ms window gives one frame (its mean-removed samples zero-padded to 400), and int16
    samples give the features of the same audio read back by soundfile as float."""
    import soundfile

    extractor = CavMaeFeatureExtractor(num_mel_bins=32, target_length=64)
    short = random_clip(3, seconds=0.5)[:160]  # 10 ms, as the tail of a 10.25 s file
    out = extractor(short, sampling_rate=16000, return_tensors="np")
    padded = np.pad(short - short.mean(), (0, 240))
    reference = torchaudio.compliance.kaldi.fbank(
        torch.from_numpy(padded)[None], htk_compat=True, sample_frequency=16000, use_energy=False,
        window_type="hanning", num_mel_bins=32, dither=0.0, frame_shift=10)
    assert out["input_features_mask"][0].sum() == 1
    np.testing.assert_allclose(out["input_features"][0, 0], ((reference[0] + 5.081) / 4.4849).numpy(), atol=1e-5)

    pcm = (random_clip(4, seconds=0.5) * 20000).astype(np.int16)
    soundfile.write(tmp_path / "pcm.wav", pcm, 16000, subtype="PCM_16")
    as_read = soundfile.read(tmp_path / "pcm.wav", dtype="float32")[0]
    np.testing.assert_array_equal(extractor(pcm, sampling_rate=16000)["input_features"][0],
                                  extractor(as_read, sampling_rate=16000)["input_features"][0])
