"""One set of media rules (`dali_hf.modeling.media`): frame names, channel axes and downmix, images, file types, used
the same way by the data helpers, the collators, the feature extractor and the CLI."""

import io
import subprocess

import numpy as np
import pytest
import soundfile
from PIL import Image

from dali_hf.data import pairs_from_videos
from dali_hf.modeling import CavMaeFeatureExtractor, media
from dali_hf.modeling.media import (
    AudioInputError,
    AudioSource,
    frame_at,
    frame_seconds,
    load_image,
    prepare_audio,
)


def two_colour_video(path, seconds: float = 2.0):
    """Red for the first half, blue for the second, with a 440 Hz tone."""
    half = seconds / 2
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"color=c=red:s=32x32:r=10:d={half}",
                    "-f", "lavfi", "-i", f"color=c=blue:s=32x32:r=10:d={half}", "-f", "lavfi", "-i",
                    f"sine=frequency=440:sample_rate=16000:duration={seconds}", "-filter_complex",
                    "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-map", "2:a", "-c:v", "libx264", "-pix_fmt",
                    "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)


def colour(image) -> str:
    red, _, blue = np.asarray(image)[16, 16]
    return "red" if red > blue else "blue"


def test_a_frame_is_middle_first_or_seconds_everywhere(tmp_path):
    """"0.25" is 0.25 seconds for every reader (it once meant a quarter of the duration in the data helpers)."""
    two_colour_video(tmp_path / "clip.mp4")
    assert colour(frame_at(tmp_path / "clip.mp4", "first")) == "red"
    assert colour(frame_at(tmp_path / "clip.mp4", "middle")) == "blue"  # 1.0 s: the first blue frame
    for frame in ("0.25", 0.25, "1.5", 1.5):
        expected = "red" if float(frame) < 1 else "blue"
        assert colour(frame_at(tmp_path / "clip.mp4", frame)) == expected, frame
        assert colour(load_image(str(tmp_path / "clip.mp4"), frame=frame)) == expected, frame
        dataset, skipped = pairs_from_videos(tmp_path, frame=frame)
        assert not skipped and colour(dataset[0]["image"]) == expected, frame
    assert colour(frame_at(tmp_path / "clip.mp4", 60)) == "blue"  # past the end: the last frame


@pytest.mark.parametrize("frame", ["last", "-1", -0.5, float("inf"), None])
def test_frame_names_outside_the_rules_are_errors(frame):
    with pytest.raises(ValueError, match='frame must be "middle", "first" or a time in seconds'):
        frame_seconds(frame, 10.0)


def test_load_image_reads_every_kind_and_names_what_it_cannot(tmp_path):
    picture = Image.new("RGB", (8, 6), (10, 200, 30))
    picture.save(tmp_path / "p.png")
    encoded = (tmp_path / "p.png").read_bytes()
    for source in (picture, picture.convert("L").convert("RGBA"), str(tmp_path / "p.png"), tmp_path / "p.png",
                   {"bytes": encoded, "path": None}, {"bytes": None, "path": str(tmp_path / "p.png")},
                   io.BytesIO(encoded)):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (8, 6)
    assert np.array_equal(np.asarray(load_image(str(tmp_path / "p.png"))), np.asarray(picture))
    with pytest.raises(ValueError, match="image of item 7: image file not found"):
        load_image(str(tmp_path / "missing.png"), name="image of item 7")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read an image"):
        load_image(str(tmp_path / "junk.png"))
    with pytest.raises(ValueError, match="unsupported image input of type int"):
        load_image(3)


def test_channel_axis_and_limit_are_the_same_for_every_reader():
    rng = np.random.default_rng(0)
    stereo = rng.uniform(-0.5, 0.5, (2, 4000)).astype(np.float32)
    for layout in (stereo, stereo.T):
        read = AudioSource(layout, sampling_rate=16000).read()
        assert np.array_equal(read, stereo)
    too_wide = np.zeros((9, 4000), np.float32)  # nine "channels": most likely a batch passed as one array
    message = "neither axis is a channel axis"
    with pytest.raises(AudioInputError, match=message):
        AudioSource(too_wide, sampling_rate=16000)
    with pytest.raises(ValueError, match=message):
        CavMaeFeatureExtractor()(too_wide, sampling_rate=16000)
    with pytest.raises(AudioInputError, match=message):
        prepare_audio({"array": too_wide, "sampling_rate": 16000}, 16000)


@pytest.mark.parametrize("policy", ["mean", "first"])
def test_downmix_follows_the_channel_policy_in_every_reader(policy, tmp_path):
    rng = np.random.default_rng(1)
    stereo = rng.uniform(-0.5, 0.5, (2, 16000)).astype(np.float32)
    mono = stereo[0] if policy == "first" else stereo.mean(axis=0)
    assert np.array_equal(media.downmix(stereo, policy), mono)
    soundfile.write(tmp_path / "stereo.wav", stereo.T, 16000, subtype="FLOAT")
    assert np.array_equal(prepare_audio(str(tmp_path / "stereo.wav"), 16000, channel_policy=policy), mono)
    extractor = CavMaeFeatureExtractor(num_mel_bins=32, target_length=128, channel_policy=policy)
    assert np.array_equal(extractor(stereo, sampling_rate=16000)["input_features"][0],
                          extractor(mono, sampling_rate=16000)["input_features"][0])
    with pytest.raises(ValueError, match="channel_policy must be one of"):
        media.downmix(stereo, "left")


def test_file_types_are_listed_once():
    assert set(media.MEDIA_EXTENSIONS) == set(media.AUDIO_EXTENSIONS) | set(media.VIDEO_EXTENSIONS)
    assert not set(media.IMAGE_EXTENSIONS) & set(media.MEDIA_EXTENSIONS)
    assert media.is_video("a/B.MP4") and not media.is_video("a/b.wav") and not media.is_video(b"bytes")
