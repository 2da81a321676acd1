"""The captioning engine (the audio-captioning pipeline) as every caller uses it: streamed inputs in input order,
per-input errors, partially decoded files, windows of long audio, and the demo's / pseudo-captions' prompts."""

import subprocess

import datasets
import numpy as np
import pytest
import soundfile
import torch
from transformers import pipeline
from transformers.pipelines.pt_utils import KeyDataset

from dali_hf.captioning import caption_rows
from dali_hf.modeling import CavMaeFeatureExtractor
from dali_hf.modeling.media import AudioInputError, AudioSource
from dali_hf.modeling.pipeline_audio_captioning import CaptionRequest, _window_seconds, caption_windows
from dali_hf.testing import random_clip, random_image, tiny_captioner

SETTINGS = dict(max_new_tokens=2)


@pytest.fixture(scope="module")
def captioner(llava_parts):
    model, processor, _ = tiny_captioner("whisper", llava_parts=llava_parts)  # 1-second windows
    return pipeline("audio-captioning", model=model, processor=processor)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three wav files as paths, each of its own length beyond the 1-second window: their results differ at least in
    their windows' timestamps (the tiny captioner's words hardly depend on the audio)."""
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for i, seconds in enumerate((1.6, 2.2, 1.8)):
        path = folder / f"clip{i}.wav"
        soundfile.write(path, random_clip(i, seconds=seconds), 16000)
        paths.append(str(path))
    return paths


def test_dataset_keydataset_and_generator_give_the_lists_captions_in_order(captioner, clips):
    expected = captioner(clips, batch_size=3, **SETTINGS)
    assert len({str(result) for result in expected}) == len(clips)  # the results differ: their order is checked
    table = datasets.Dataset.from_dict({"audio": clips, "id": list(range(len(clips)))})
    decoded = table.cast_column("audio", datasets.Audio())  # rows hold torchcodec decoders
    streams = {
        "KeyDataset": KeyDataset(table, "audio"),
        "datasets.Dataset (audio column)": decoded,
        "generator": (path for path in clips),
    }
    for kind, stream in streams.items():
        results = captioner(stream, batch_size=3, **SETTINGS)
        assert not isinstance(results, list), kind  # an iterator, as transformers' pipelines give for datasets
        assert list(results) == expected, kind
    assert list(captioner(iter(clips), batch_size=3, num_workers=1, **SETTINGS)) == expected  # decoded ahead
    # rows with an image column, for audiovisual captions (which depend on the image)
    images = [random_image(i) for i in range(len(clips))]
    expected = captioner(clips, images=images, mode="audiovisual", batch_size=4, **SETTINGS)
    rows = datasets.Dataset.from_dict({"audio": clips, "image": images}).cast_column("image", datasets.Image())
    assert list(captioner(rows, mode="audiovisual", batch_size=4, **SETTINGS)) == expected
    assert list(captioner(iter(clips), images=iter(images), mode="audiovisual", batch_size=4, **SETTINGS)) == expected


def test_streams_are_read_lazily(captioner, clips):
    pulled = []

    def stream():
        for path in clips * 3:
            pulled.append(path)
            yield path

    results = captioner(stream(), batch_size=2, **SETTINGS)
    first = next(iter(results))
    assert first == captioner(clips[0], **SETTINGS)
    assert len(pulled) <= 4, len(pulled)  # one batch of windows (and one input peeked), not all 12 inputs


def test_on_error_return_keeps_the_good_inputs(captioner, clips, tmp_path):
    good, other, empty = random_clip(7, seconds=1.5), random_clip(6, seconds=0.4), np.zeros(0, dtype=np.float32)
    alone = [captioner(clip, sampling_rate=16000, **SETTINGS) for clip in (good, other)]
    results = captioner([good, empty, other], sampling_rate=16000, batch_size=3, on_error="return", **SETTINGS)
    assert [results[0], results[2]] == alone
    assert results[1] == [{"error": "AudioInputError: input 1 of 3 (ndarray) is empty (zero samples)"}]
    with pytest.raises(AudioInputError, match=r"^input 1 of 3 \(ndarray\) is empty"):  # default: raise, naming it
        captioner([good, empty, good], sampling_rate=16000, batch_size=3, **SETTINGS)
    # a long clip that fails in its second window, a missing file, in a stream with batches across inputs
    broken = random_clip(8, seconds=2.5)
    broken[20000] = np.nan
    stream = iter([clips[2], broken, "missing.wav", clips[0]])
    results = list(captioner(stream, sampling_rate=16000, batch_size=2, on_error="return", **SETTINGS))
    assert results[0] == captioner(clips[2], **SETTINGS) and results[3] == captioner(clips[0], **SETTINGS)
    assert results[1][0]["error"].startswith("AudioInputError: input 1 (ndarray) contains NaN or infinite samples")
    assert results[2] == [{"error": "AudioInputError: audio file not found: missing.wav"}]
    # a dataset row that the dataset itself cannot decode
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    table = datasets.Dataset.from_dict({"audio": [clips[1], str(tmp_path / "bad.wav"), clips[0]]})
    results = list(captioner(table.cast_column("audio", datasets.Audio()), batch_size=2, on_error="return",
                             **SETTINGS))
    assert [results[0], results[2]] == [captioner(clips[1], **SETTINGS), captioner(clips[0], **SETTINGS)]
    assert results[1][0]["error"].startswith("AudioInputError: input 1: the dataset could not read it")
    (row,) = captioner(table.cast_column("audio", datasets.Audio(decode=False)).select([1]), on_error="return")
    assert row == [{"error": f"AudioInputError: cannot decode audio from {tmp_path / 'bad.wav'}: not an audio or "
                             "video file that FFmpeg can read (unknown format, or a corrupt file)"}]
    with pytest.raises(ValueError, match="on_error must be one of"):
        captioner(clips, on_error="skip")


def _ffmpeg(*args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *map(str, args)], check=True)


def test_truncated_mp3_is_captioned_and_marked_partial(captioner, tmp_path):
    """A file cut in half is captioned from what decodes, and its result says how much that is: the length that
    ffmpeg's own command line decodes from the cut file."""
    rows = {}
    for name, seconds in (("long", 3.0), ("short", 0.9)):
        soundfile.write(tmp_path / f"{name}.wav", random_clip(3, seconds=seconds), 16000)
        _ffmpeg("-i", tmp_path / f"{name}.wav", "-c:a", "libmp3lame", tmp_path / f"{name}.mp3")
        data = (tmp_path / f"{name}.mp3").read_bytes()
        (tmp_path / f"{name}-cut.mp3").write_bytes(data[: len(data) // 2])
        _ffmpeg("-i", tmp_path / f"{name}-cut.mp3", "-c:a", "pcm_f32le", tmp_path / f"{name}-cut.wav")
        decoded = soundfile.info(tmp_path / f"{name}-cut.wav").duration
        (whole,) = captioner(str(tmp_path / f"{name}.mp3"), **SETTINGS)
        assert "partial" not in whole
        (cut,) = captioner(str(tmp_path / f"{name}-cut.mp3"), **SETTINGS)
        assert cut["partial"]["duration_s"] == pytest.approx(seconds, abs=0.06), name
        assert cut["partial"]["decoded_s"] == pytest.approx(decoded, abs=0.05), name
        assert cut["partial"]["decoded_s"] < seconds - 0.3
        rows[name] = next(caption_rows(captioner, [str(tmp_path / f"{name}-cut.mp3")], **SETTINGS))
        assert rows[name]["partial"] == cut["partial"]
    (cut,) = captioner(str(tmp_path / "long-cut.mp3"), **SETTINGS)
    windows = [tuple(chunk["timestamp"]) for chunk in cut["chunks"]]
    assert windows[:-1] == [(0.0, 1.0)] and windows[-1] == (1.0, cut["partial"]["decoded_s"])  # where it stopped
    assert "caption" in rows["short"] and "chunks" in rows["long"]


def test_no_caption_covers_less_than_half_a_window(captioner):
    """0.645 s at a 0.64 s window: the second caption is of the last 0.64 s, not of 5 ms."""
    clip = random_clip(5, seconds=0.645)
    (result,) = captioner(clip, sampling_rate=16000, chunk_length_s=0.64, **SETTINGS)
    assert [chunk["timestamp"] for chunk in result["chunks"]] == [(0.0, 0.64), (0.005, 0.645)]
    last_window = captioner(clip[80:], sampling_rate=16000, **SETTINGS)[0]["caption"]  # samples 0.005-0.645 s
    assert result["chunks"][1]["caption"] == last_window
    # a tail of half a window or more keeps its own window
    (result,) = captioner(random_clip(5, seconds=2.5), sampling_rate=16000, **SETTINGS)
    assert [chunk["timestamp"] for chunk in result["chunks"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]


def test_cav_mae_windows_of_a_10_25_s_file():
    window = _window_seconds(CavMaeFeatureExtractor(target_length=1024))
    assert window == pytest.approx(10.24)
    source = AudioSource(np.zeros(int(10.25 * 16000), np.float32), sampling_rate=16000)
    assert caption_windows(source, window) == [(0.0, window), (pytest.approx(0.01), 10.25)]
    # with overlapping windows the tail is never short: kept as the windows fall
    source = AudioSource(np.zeros(int(25.0 * 16000), np.float32), sampling_rate=16000)
    assert caption_windows(source, 10.0, 5.0) == [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (15.0, 25.0)]
    assert caption_windows(source, 10.0) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]


def test_prefix_prompts_equal_the_processor_and_generate(captioner):
    """The prompts the demo scores and pseudo-captions are made with, batched by the engine, equal a direct
    processor + generate() call on the whole batch (the loops these callers had before)."""
    model, processor = captioner.model, captioner.processor
    clips = [random_clip(i, seconds=0.8) for i in range(3)]
    images = [random_image(i) for i in range(3)]
    cases = [
        ({"mode": "audio", "prefix": True}, dict(image=False, audio=True, prefix=True), {"audio": clips}),
        ({"mode": "audiovisual"}, dict(image=True, audio=True, prefix=True), {"audio": clips, "images": images}),
        ({"mode": "image", "prefix": True}, dict(image=True, prefix=True), {"images": images}),
    ]
    for call, prompt, inputs in cases:
        text = processor.caption_prompt(**prompt)
        batch = processor(text=[text] * 3, sampling_rate=16000, return_tensors="pt", **inputs)
        request = CaptionRequest(audio=clips[0] if "audio" in inputs else None, image=inputs.get("images", [None])[0])
        (prepared,) = captioner.preprocess(request, sampling_rate=16000, **call)
        assert torch.equal(prepared["input_ids"][0], batch["input_ids"][0]), call  # the same prompt
        with torch.no_grad():
            generated = model.generate(**batch, max_new_tokens=2, do_sample=False)
        expected = [[{"caption": caption.strip()}] for caption in
                    processor.batch_decode(generated[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)]
        given = clips if "audio" in inputs else None
        got = captioner(given, images=inputs.get("images"), sampling_rate=16000, batch_size=3,
                        silence_threshold_db=None, **SETTINGS, **call)
        assert got == expected, call
