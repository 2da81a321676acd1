"""pipeline("audio-captioning"): input kinds, batching, resampling, long audio in bounded memory, errors, remote code."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF
from transformers import ASTConfig, ASTFeatureExtractor, pipeline

from dali_hf import LlavaAudioForConditionalGeneration, LlavaAudioProcessor
from dali_hf.modeling.media import AudioInputError
from dali_hf.testing import random_image, run_without_dali_hf, saved_captioner

SETTINGS = dict(max_new_tokens=4)


def tone(seconds=0.5, rate=16000, frequency=440.0, channels=1, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(len(t))
    return np.stack([mono] * channels).astype(np.float32) if channels > 1 else mono.astype(np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, llava_parts):
    return saved_captioner(llava_parts, "whisper", tmp_path_factory.mktemp("captioner"))  # 1-second windows


@pytest.fixture(scope="module")
def captioner(folder):
    return pipeline("audio-captioning", model=str(folder))


def _caption(output):
    assert isinstance(output, list) and len(output) == 1, output
    return output[0]["caption"]


def test_every_input_kind_gives_the_same_caption(captioner, tmp_path):
    from torchcodec.decoders import AudioDecoder

    clip = tone()
    soundfile.write(tmp_path / "clip.wav", clip, 16000, subtype="FLOAT")
    soundfile.write(tmp_path / "clip.flac", clip, 16000, subtype="PCM_24")
    flac = soundfile.read(tmp_path / "clip.flac", dtype="float32")[0]
    expected = _caption(captioner(clip, sampling_rate=16000, **SETTINGS))
    lossless = {
        "wav path": tmp_path / "clip.wav",
        "str path": str(tmp_path / "clip.wav"),
        "bytes": (tmp_path / "clip.wav").read_bytes(),
        "tensor": torch.from_numpy(clip),
        "dict": {"array": clip, "sampling_rate": 16000},
        "torchcodec decoder": AudioDecoder(str(tmp_path / "clip.wav")),
    }
    for kind, value in lossless.items():
        rate = {"tensor": 16000}.get(kind)
        assert _caption(captioner(value, sampling_rate=rate, **SETTINGS)) == expected, kind
    assert _caption(captioner(str(tmp_path / "clip.flac"), **SETTINGS)) == \
        _caption(captioner(flac, sampling_rate=16000, **SETTINGS))


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *map(str, args)], check=True)


def _decoded_by_ffmpeg(path, folder):
    """The audio of `path` as ffmpeg's own command line decodes it (float wav), read back by soundfile."""
    _ffmpeg("-i", path, "-vn", "-c:a", "pcm_f32le", folder / "decoded.wav")
    samples, rate = soundfile.read(folder / "decoded.wav", dtype="float32")
    return samples, rate


def test_lossy_files_and_video_caption_as_their_decoded_audio(captioner, tmp_path):
    """A lossy file or a video captions as its audio track decoded independently (ffmpeg's CLI); a video's frame is
    the frame ffmpeg extracts at the same time."""
    clip = tone(seconds=0.8)
    soundfile.write(tmp_path / "clip.wav", clip, 16000)
    for suffix, codec in ((".mp3", ["-c:a", "libmp3lame"]), (".ogg", ["-c:a", "libvorbis"])):
        _ffmpeg("-i", tmp_path / "clip.wav", *codec, tmp_path / f"clip{suffix}")
        samples, rate = _decoded_by_ffmpeg(tmp_path / f"clip{suffix}", tmp_path)
        assert _caption(captioner(str(tmp_path / f"clip{suffix}"), **SETTINGS)) == \
            _caption(captioner(samples, sampling_rate=rate, **SETTINGS)), suffix
    # a video whose left half turns from red to blue at 0.4 s: "first" and "middle" frames differ
    _ffmpeg("-f", "lavfi", "-i", "color=c=red:s=32x32:r=5:d=0.4", "-f", "lavfi", "-i", "color=c=blue:s=32x32:r=5:d=0.4",
            "-i", tmp_path / "clip.wav", "-filter_complex", "[0:v][1:v]concat=n=2:v=1[v]", "-map", "[v]", "-map", "2:a",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", tmp_path / "clip.mp4")
    samples, rate = _decoded_by_ffmpeg(tmp_path / "clip.mp4", tmp_path)
    assert _caption(captioner(str(tmp_path / "clip.mp4"), **SETTINGS)) == \
        _caption(captioner(samples, sampling_rate=rate, **SETTINGS))
    for frame, seconds in (("first", 0.0), ("middle", 0.6), (0.6, 0.6)):
        _ffmpeg("-ss", seconds, "-i", tmp_path / "clip.mp4", "-frames:v", "1", tmp_path / "frame.png")
        expected = captioner(samples, sampling_rate=rate, mode="audiovisual", images=str(tmp_path / "frame.png"),
                             **SETTINGS)
        got = captioner(str(tmp_path / "clip.mp4"), mode="audiovisual", frame=frame, **SETTINGS)
        assert _caption(got) == _caption(expected), frame
    with_image = captioner(str(tmp_path / "clip.mp4"), mode="audiovisual", images=random_image(1), **SETTINGS)
    assert _caption(with_image) == _caption(captioner(samples, sampling_rate=rate, mode="audiovisual",
                                                      images=random_image(1), **SETTINGS))


def test_multichannel_audio_follows_the_feature_extractors_channel_policy(captioner):
    from dali_hf.modeling.pipeline_audio_captioning import CaptionRequest

    left, right = tone(frequency=300, seed=1), tone(frequency=2000, seed=2)
    stereo = np.stack([left, right])

    def features(audio):
        (inputs,) = captioner.preprocess(CaptionRequest(audio=audio), sampling_rate=16000)
        return inputs["input_features"]

    assert torch.equal(features(stereo), features(stereo.mean(axis=0)))
    assert not torch.equal(features(stereo), features(left))
    extractor = captioner.processor.feature_extractor
    extractor.channel_policy = "first"  # as CavMaeFeatureExtractor(channel_policy="first") says
    try:
        assert torch.equal(features(stereo), features(left))
    finally:
        del extractor.channel_policy


def test_batch_of_five_equals_five_single_calls(captioner):
    clips = [tone(seconds=0.3 + 0.1 * i, frequency=200 + 150 * i, seed=i) for i in range(5)]
    singles = [captioner(clip, sampling_rate=16000, **SETTINGS) for clip in clips]
    assert captioner(clips, sampling_rate=16000, batch_size=5, **SETTINGS) == singles
    images = [random_image(i) for i in range(5)]
    singles = [captioner(c, images=im, mode="audiovisual", sampling_rate=16000, **SETTINGS)
               for c, im in zip(clips, images, strict=True)]
    assert captioner(clips, images=images, mode="audiovisual", sampling_rate=16000, batch_size=5,
                     **SETTINGS) == singles


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_and_downmix(captioner, rate):
    stereo = tone(seconds=0.6, rate=rate, channels=2)
    stereo[1] *= 0.5
    mono16k = AF.resample(torch.from_numpy(stereo.mean(0)), rate, 16000).numpy()
    expected = captioner(mono16k, sampling_rate=16000, **SETTINGS)
    assert captioner(stereo, sampling_rate=rate, **SETTINGS) == expected
    assert captioner(stereo.T.copy(), sampling_rate=rate, **SETTINGS) == expected  # [time, channels] too


def test_windows_and_timestamps(captioner):
    clip = tone(seconds=2.5)
    (out,) = captioner(clip, sampling_rate=16000, **SETTINGS)
    assert [o["timestamp"] for o in out["chunks"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    (overlapping,) = captioner(clip, sampling_rate=16000, chunk_length_s=1.0, stride_length_s=0.5, **SETTINGS)
    assert [o["timestamp"] for o in overlapping["chunks"]][:3] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0)]
    with pytest.raises(ValueError, match="longer than the audio encoder's input"):
        captioner(clip, sampling_rate=16000, chunk_length_s=5.0)


def test_clear_errors(captioner, tmp_path):
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    cases = [
        (str(tmp_path / "missing.wav"), {}, "audio file not found"),
        (str(tmp_path / "corrupt.wav"), {}, "cannot decode audio"),
        (np.zeros(0, dtype=np.float32), {"sampling_rate": 16000}, "empty"),
        (np.array([0.1, np.nan] * 800, dtype=np.float32), {"sampling_rate": 16000}, "NaN or infinite"),
        (np.array([0.1, np.inf] * 800, dtype=np.float32), {"sampling_rate": 16000}, "NaN or infinite"),
        (tone(), {}, "need their sampling_rate"),
        (12345, {}, "unsupported audio input of type int"),
    ]
    for value, kwargs, message in cases:
        with pytest.raises(AudioInputError, match=message):
            captioner(value, **kwargs, **SETTINGS)
    with pytest.raises(ValueError, match=r"audiovisual mode needs an image, .* in Python, or .*\(--mode audio for "
                                         r"dali-hf caption\)"):
        captioner(tone(), sampling_rate=16000, mode="audiovisual")
    with pytest.raises(ValueError, match="mode must be one of"):
        captioner(tone(), sampling_rate=16000, mode="video")


def test_image_mode_is_plain_llava_and_paper_preset_samples(captioner, llava_parts):
    llava, llava_processor = llava_parts
    image = random_image(9)
    caption = _caption(captioner(images=image, mode="image", max_new_tokens=4, generate_kwargs={"min_new_tokens": 4}))
    inputs = llava_processor(text="USER: <image>\nDescribe the sound that can be heard in this scene. ASSISTANT:",
                             images=image, return_tensors="pt")
    # the captioner never generates its <audio>/<prefix> ids (spare rows LLaVA has no token for)
    generated = llava.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                               suppress_tokens=captioner.model.generation_config.suppress_tokens)
    assert caption == llava_processor.decode(generated[0, inputs["input_ids"].shape[1]:],
                                             skip_special_tokens=True).strip()
    torch.manual_seed(0)
    first = captioner(tone(), sampling_rate=16000, preset="paper", max_new_tokens=6)
    torch.manual_seed(0)
    assert captioner(tone(), sampling_rate=16000, preset="paper", max_new_tokens=6) == first  # seeded: reproducible


LONG_RUN = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    import dali_hf
    from transformers import pipeline
    captioner = pipeline("audio-captioning", model=sys.argv[1])
    if sys.argv[3] == "short":
        out = captioner(np.zeros(16000, dtype=np.float32) + 0.01, sampling_rate=16000, max_new_tokens=1)
    else:
        out = captioner(sys.argv[2], max_new_tokens=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mib": peak, "timestamps": [o.get("timestamp") for o in out[0].get("chunks", out)]}))
    """
)


@pytest.fixture(scope="module")
def long_window_folder(tmp_path_factory, llava_parts):
    """A captioner whose encoder window is 10.24 s (AST over 1024 frames), as the paper's CAV-MAE."""
    llava, llava_processor = llava_parts
    config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                       patch_size=16, frequency_stride=16, time_stride=128, max_length=1024, num_mel_bins=32)
    processor = LlavaAudioProcessor.from_llava(llava_processor, ASTFeatureExtractor(num_mel_bins=32, max_length=1024),
                                               audio_config=config)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, config, processor=processor)
    path = tmp_path_factory.mktemp("long")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.mark.slow
def test_thirty_minutes_in_windows_with_bounded_memory(long_window_folder, tmp_path):
    path = tmp_path / "half-hour.flac"
    rate, minutes = 16000, 30
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=1, subtype="PCM_16") as handle:
        for minute in range(minutes):
            handle.write(tone(seconds=60, rate=rate, frequency=200 + 10 * minute, seed=minute))
    script = tmp_path / "long.py"
    script.write_text(LONG_RUN)

    def run(kind):
        result = subprocess.run([sys.executable, str(script), str(long_window_folder), str(path), kind],
                                capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    baseline, long = run("short"), run("long")
    timestamps = [tuple(t) for t in long["timestamps"]]
    assert len(timestamps) == 176 and timestamps[0] == (0.0, 10.24) and timestamps[-1] == (1792.0, 1800.0)
    assert all(a[1] == b[0] for a, b in zip(timestamps[:-1], timestamps[1:], strict=True))  # contiguous
    # the whole file as float32 would be 110 MiB; streaming keeps the growth far below it
    growth = long["peak_mib"] - baseline["peak_mib"]
    print(f"peak RSS: short clip {baseline['peak_mib']:.0f} MiB, 30 minutes {long['peak_mib']:.0f} MiB")
    assert growth < 40, (baseline, long)


REMOTE_PIPELINE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from transformers import pipeline
    captioner = pipeline(model=sys.argv[1], trust_remote_code=True)
    assert "dali_hf" not in type(captioner).__module__
    # the task named, as with dali_hf installed: the folder's entry for it
    named = pipeline("audio-captioning", model=sys.argv[1], trust_remote_code=True)
    assert type(named) is type(captioner), type(named)
    clip = (0.3 * np.sin(np.arange(8000) / 16000 * 2 * np.pi * 440)).astype(np.float32)
    print(type(captioner).__name__, captioner(clip, sampling_rate=16000, max_new_tokens=3))
    """
)


def test_pipeline_loads_through_remote_code_without_dali_hf(folder, tmp_path):
    result = run_without_dali_hf(REMOTE_PIPELINE, folder, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "AudioCaptioningPipeline [{'caption':" in result.stdout


def test_caption_cli_reports_bad_files_and_goes_on(folder, tmp_path, capsys):
    from dali_hf.cli import main

    media = tmp_path / "media"
    media.mkdir()
    for i in range(3):
        soundfile.write(media / f"clip{i}.wav", tone(seconds=0.5, frequency=300 + 100 * i), 16000)
    (media / "broken.wav").write_bytes(b"not audio")
    soundfile.write(tmp_path / "long.flac", tone(seconds=2.2), 16000)
    output = tmp_path / "captions.jsonl"
    main(["caption", str(media), str(tmp_path / "long.flac"), "--model", str(folder), "--batch-size", "2",
          "--output", str(output), "--max-new-tokens", "3"])
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [os.path.basename(r["file"]) for r in rows] == ["broken.wav", "clip0.wav", "clip1.wav", "clip2.wav",
                                                           "long.flac"]
    assert "cannot decode" in rows[0]["error"] and all("caption" in r for r in rows[1:-1])
    # the 0.2 s tail is captioned as the last full window, 1.2-2.2 s
    assert [s["timestamp"] for s in rows[-1]["chunks"]] == [[0.0, 1.0], [1.0, 2.0], [1.2, 2.2]]
    out = capsys.readouterr().out
    assert "4 of 5 files captioned" in out and "failed: " in out and "broken.wav" in out
