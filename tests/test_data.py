"""Audio input and (audio, image) pairs from video files: decoded by FFmpeg, bad files reported, not replaced."""

import shutil
import subprocess

import numpy as np
import pytest
import soundfile

from dali_hf.data import pairs_from_videos
from dali_hf.modeling.media import AudioInputError, frame_at, prepare_audio


def make_video(path, frequency: int, colour: str, seconds: float = 2.0) -> None:
    """An mp4 with a solid-colour picture and a sine tone (44.1 kHz stereo audio track)."""
    assert shutil.which("ffmpeg"), "ffmpeg is needed (make install installs Debian's ffmpeg when run as root)"
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"color=c={colour}:s=64x48:r=10:d={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate=44100:duration={seconds}", "-ac", "2",
         "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True,
    )


def test_pairs_from_videos_with_a_corrupt_file(tmp_path):
    make_video(tmp_path / "red.mp4", 440, "red")
    (tmp_path / "sub").mkdir()
    make_video(tmp_path / "sub" / "blue.mp4", 880, "blue")
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    dataset, skipped = pairs_from_videos(tmp_path, sampling_rate=16000)
    assert sorted(dataset["id"]) == ["red", "sub/blue"]
    assert [s["path"] for s in skipped] == [str(tmp_path / "broken.mp4")]
    row = dataset[dataset["id"].index("red")]
    audio = np.asarray(row["audio"]["array"])
    assert row["audio"]["sampling_rate"] == 16000 and abs(len(audio) / 16000 - 2.0) < 0.1
    spectrum = np.abs(np.fft.rfft(audio[4000:12000]))
    assert abs(np.argmax(spectrum) * 16000 / 8000 - 440) < 5  # the tone survives decode, downmix, resample
    pixel = np.asarray(row["image"])[24, 32]
    assert pixel[0] > 200 and pixel[2] < 60  # red
    assert np.asarray(frame_at(str(tmp_path / "sub" / "blue.mp4"), "first"))[24, 32, 2] > 200


def test_prepare_audio_checks_and_converts(tmp_path):
    t = np.arange(22050) / 22050
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 300 * t)], axis=1).astype(np.float32)
    soundfile.write(tmp_path / "tone.wav", stereo, 22050)
    mono = prepare_audio(str(tmp_path / "tone.wav"), 16000)
    assert mono.ndim == 1 and abs(len(mono) - 16000) <= 1
    assert np.allclose(prepare_audio({"array": mono, "sampling_rate": 16000}, 16000), mono)
    with pytest.raises(AudioInputError, match="not found"):
        prepare_audio(str(tmp_path / "missing.wav"), 16000)
    (tmp_path / "junk.wav").write_bytes(b"RIFF....junk")
    with pytest.raises(AudioInputError, match="cannot decode"):
        prepare_audio(str(tmp_path / "junk.wav"), 16000)
    with pytest.raises(AudioInputError, match="empty"):
        prepare_audio({"array": np.zeros(0), "sampling_rate": 16000}, 16000)
    with pytest.raises(AudioInputError, match="NaN"):
        prepare_audio({"array": np.array([0.0, np.nan]), "sampling_rate": 16000}, 16000)
    with pytest.raises(AudioInputError, match="unsupported audio input"):
        prepare_audio(42, 16000)
