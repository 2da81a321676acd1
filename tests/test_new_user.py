"""What a new user meets first: short, long, silent and integer audio, generation arguments, bad files and their
errors, benchmark file matching and scoring, and the `dali-hf` command (run as the installed entry point).

Media are made here: numpy + soundfile for wav, ffmpeg (installed by `make install`) for mp3 and mp4.
"""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from transformers import pipeline

from dali_hf.evaluation import evaluate_captioner, read_audiocaps, read_clotho
from dali_hf.metrics import spice_available
from dali_hf.modeling.media import AudioInputError
from dali_hf.modeling.pipeline_audio_captioning import CaptionRequest
from dali_hf.testing import saved_captioner

DALI_HF = str(Path(sys.executable).with_name("dali-hf"))
RATE = 16000
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")


def tone(seconds=0.5, frequency=440.0, seed=0):
    t = np.arange(int(round(seconds * RATE))) / RATE
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * np.sin(2 * np.pi * frequency * t) + 0.05 * noise).astype(np.float32)


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *map(str, args)], check=True)


def run_cli(*args, cwd=None, timeout=600):
    """The installed `dali-hf` command, in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([DALI_HF, *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=timeout)


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory, llava_parts):
    """A saved captioner whose encoder window is 1 s (tiny Whisper encoder)."""
    return saved_captioner(llava_parts, "whisper", tmp_path_factory.mktemp("whisper-captioner"))


@pytest.fixture(scope="module")
def ast_folder(tmp_path_factory, llava_parts):
    """A saved captioner with an AST encoder (Kaldi filterbank, 0.64 s window), whose feature extractor asserts
    on audio shorter than one 25 ms frame."""
    return saved_captioner(llava_parts, "ast", tmp_path_factory.mktemp("ast-captioner"))


@pytest.fixture(scope="module")
def captioner(whisper_folder):
    return pipeline("audio-captioning", model=str(whisper_folder))


@pytest.fixture(scope="module")
def ast_captioner(ast_folder):
    return pipeline("audio-captioning", model=str(ast_folder))


# ---- 1. evaluate: one caption per clip, from the first window -----------------------------------------------------


def _write_clotho(folder: Path, clips: dict[str, np.ndarray]) -> Path:
    (folder / "audio").mkdir(parents=True)
    for name, clip in clips.items():
        soundfile.write(folder / "audio" / name, clip, RATE, subtype="FLOAT")
    path = folder / "clotho.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name"] + [f"caption_{k}" for k in range(1, 6)])
        for name in clips:
            writer.writerow([name, "a dog barks", "a bell rings", "rain falls", "water flows", "a car engine"])
    return path


@pytest.mark.slow
def test_evaluate_scores_one_caption_per_clip_from_the_first_window(captioner, whisper_folder, tmp_path):
    """Points 1 and 13: clips of 2.5 s (longer than the 1 s window) are captioned from their first second, as the
    paper cuts clips to the encoder's input; joining the window captions is an explicit option; SPICE / SPIDEr
    left out are named in scores.json and the output."""
    clips = {f"clip{i}.wav": tone(2.5, frequency=300 + 150 * i, seed=i) for i in range(3)}
    csv_path = _write_clotho(tmp_path, clips)
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--model", whisper_folder, "--data", csv_path, "--audio-dir", tmp_path / "audio",
                     "--output-dir", out, "--max-new-tokens", 4, "--batch-size", 2)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    first_second = [captioner(clip[:RATE], sampling_rate=RATE, max_new_tokens=4, silence_threshold_db=None)
                    [0]["caption"] for clip in clips.values()]
    assert [r["caption"] for r in rows] == first_second
    report = json.loads((out / "scores.json").read_text())
    assert report["long_clips"] == "first_window"
    if not spice_available():
        assert set(report["not_computed"]) == {"spice", "spider"} and "CoreNLP" in report["not_computed"]["spice"]
        assert "spice not computed" in result.stdout and "spider not computed" in result.stdout

    data, _ = read_clotho(str(csv_path), str(tmp_path / "audio"))
    evaluate_captioner(captioner, data, str(tmp_path / "joined"), max_new_tokens=4, metrics=["cider_d"],
                       long_clips="joined_chunks")
    rows = [json.loads(line) for line in (tmp_path / "joined" / "captions.jsonl").read_text().splitlines()]
    windows = [[c["caption"] for c in captioner(clip, sampling_rate=RATE, max_new_tokens=4,
                                                silence_threshold_db=None)[0]["chunks"]] for clip in clips.values()]
    assert [r["caption"] for r in rows] == [" ".join(w) for w in windows]
    assert all(len(w) == 3 for w in windows)


@pytest.mark.slow
def test_evaluate_checks_metrics_before_captioning(whisper_folder, tmp_path):
    """Point 13: a misspelt metric is an argument error, SPICE without CoreNLP an error, both before any clip is
    captioned (no captions.jsonl)."""
    csv_path = _write_clotho(tmp_path, {"clip.wav": tone(0.5)})
    common = ["evaluate", "--model", whisper_folder, "--data", csv_path, "--audio-dir", tmp_path / "audio",
              "--output-dir", tmp_path / "out"]
    typo = run_cli(*common, "--metrics", "cider")
    assert typo.returncode == 2 and "invalid choice: 'cider'" in typo.stderr
    if spice_available():
        pytest.skip("Stanford CoreNLP is installed here: SPIDEr can run")
    spider = run_cli(*common, "--metrics", "cider_d", "spider")
    assert spider.returncode != 0 and "CoreNLP" in spider.stderr and "Traceback" not in spider.stderr
    assert not (tmp_path / "out" / "captions.jsonl").exists()


# ---- 2. long audio: the windows, in the shape of the speech-recognition pipeline's chunks ---------------------------


def test_long_audio_gives_chunks_and_no_joined_caption(captioner):
    clip = tone(2.5)
    (result,) = captioner(clip, sampling_rate=RATE, max_new_tokens=4)
    assert set(result) == {"chunks"}
    assert [c["timestamp"] for c in result["chunks"]] == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.5)]
    for chunk, (start, end) in zip(result["chunks"], [(0, 16000), (16000, 32000), (32000, 40000)], strict=True):
        assert chunk["caption"] == captioner(clip[start:end], sampling_rate=RATE, max_new_tokens=4)[0]["caption"]
    first = captioner(clip, sampling_rate=RATE, max_new_tokens=4, long_audio="first_window")
    assert first == captioner(clip[:RATE], sampling_rate=RATE, max_new_tokens=4)
    assert captioner(clip[:RATE], sampling_rate=RATE, max_new_tokens=4)[0].keys() == {"caption"}  # one window
    with pytest.raises(ValueError, match="long_audio must be one of"):
        captioner(clip, sampling_rate=RATE, long_audio="all")


# ---- 3. integer PCM ------------------------------------------------------------------------------------------------


def test_integer_pcm_is_read_as_soundfile_reads_it(captioner, tmp_path):
    pcm = (tone(0.5) * 30000).astype(np.int16)
    soundfile.write(tmp_path / "pcm.wav", pcm, RATE, subtype="PCM_16")
    as_read = soundfile.read(tmp_path / "pcm.wav", dtype="float32")[0]
    features = [next(captioner.preprocess(CaptionRequest(audio=audio), sampling_rate=RATE))["input_features"]
                for audio in (pcm, as_read)]
    assert np.array_equal(features[0].numpy(), features[1].numpy())
    assert captioner(pcm, sampling_rate=RATE, max_new_tokens=4) == captioner(as_read, sampling_rate=RATE,
                                                                            max_new_tokens=4)
    with pytest.raises(AudioInputError, match="int64 samples: pass float samples"):  # no PCM format is 64-bit
        captioner(pcm.astype(np.int64), sampling_rate=RATE)
    unsigned = (pcm // 256 + 128).astype(np.uint8)  # 8-bit wav is unsigned, centred on 128
    expected = ((unsigned.astype(np.float64) - 128) / 128).astype(np.float32)
    features = [next(captioner.preprocess(CaptionRequest(audio=audio), sampling_rate=RATE))["input_features"]
                for audio in (unsigned, expected)]
    assert np.array_equal(features[0].numpy(), features[1].numpy())


# ---- 4. generation arguments ---------------------------------------------------------------------------------------


def test_generation_arguments_are_passed_and_unknown_ones_rejected(captioner, monkeypatch):
    seen = []
    generate = captioner.model.generate

    def recording_generate(*args, **kwargs):
        seen.append({k: v for k, v in kwargs.items() if k not in ("input_ids", "attention_mask", "input_features",
                                                                  "input_features_mask", "pixel_values")})
        return generate(*args, **kwargs)

    monkeypatch.setattr(captioner.model, "generate", recording_generate)
    captioner(tone(), sampling_rate=RATE, max_new_tokens=2, do_sample=True, temperature=5.0, top_k=3)
    assert seen[-1]["max_new_tokens"] == 2 and seen[-1]["do_sample"] is True
    assert seen[-1]["temperature"] == 5.0 and seen[-1]["top_k"] == 3
    captioner(tone(), sampling_rate=RATE, generate_kwargs={"num_beams": 2, "max_new_tokens": 3})
    assert seen[-1]["num_beams"] == 2 and seen[-1]["max_new_tokens"] == 3
    with pytest.raises(TypeError, match=r"unknown argument\(s\) \['max_new_token'\]"):
        captioner(tone(), sampling_rate=RATE, max_new_token=2)
    with pytest.raises(ValueError, match="given twice"):
        captioner(tone(), sampling_rate=RATE, num_beams=2, generate_kwargs={"num_beams": 3})


# ---- 5. AudioCaps file matching ----------------------------------------------------------------------------------


def test_audiocaps_files_match_the_whole_id_and_the_start_time(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in ("y00_Ab-0x_30.wav", "Yq-7_a_10.000_20.000.wav", "plain-id.wav"):
        soundfile.write(audio / name, tone(0.1), RATE)
    with open(tmp_path / "test.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["audiocap_id", "youtube_id", "start_time", "caption"])
        for index, (youtube_id, start) in enumerate([("y00_Ab-0x", 30), ("y00_Ab-0x", 120), ("y00", 30),
                                                     ("q-7_a", 10), ("plain-id", 0)]):
            writer.writerow([index, youtube_id, start, "a sound"])
    data, missing = read_audiocaps(str(tmp_path / "test.csv"), str(audio))
    found = {row["id"]: os.path.basename(row["audio"]) for row in data}
    assert found == {"y00_Ab-0x_30": "y00_Ab-0x_30.wav", "q-7_a_10": "Yq-7_a_10.000_20.000.wav",
                     "plain-id_0": "plain-id.wav"}
    assert sorted(m["id"] for m in missing) == ["y00_30", "y00_Ab-0x_120"]


# ---- 6. silence ----------------------------------------------------------------------------------------------------


def test_silence_is_said_not_described(captioner):
    for quiet in (np.zeros(RATE // 2, np.float32), 1e-4 * tone(0.5)):  # digital silence; -80 dBFS noise
        assert captioner(quiet, sampling_rate=RATE, max_new_tokens=4) == [{"caption": "silence", "silent": True}]
    loud = captioner(tone(), sampling_rate=RATE, max_new_tokens=4)
    assert "silent" not in loud[0]
    model_caption = captioner(np.zeros(RATE // 2, np.float32), sampling_rate=RATE, max_new_tokens=4,
                              silence_threshold_db=None)
    assert model_caption[0].keys() == {"caption"}
    never = pipeline("audio-captioning", model=captioner.model, processor=captioner.processor,
                     silence_threshold_db=None)  # set once, kept for every call
    assert never(np.zeros(RATE // 2, np.float32), sampling_rate=RATE, max_new_tokens=4) == model_caption
    clip = np.concatenate([tone(1.0), np.zeros(RATE, np.float32)])
    chunks = captioner(clip, sampling_rate=RATE, max_new_tokens=4)[0]["chunks"]
    assert "silent" not in chunks[0] and chunks[1] == {"caption": "silence", "silent": True, "timestamp": (1.0, 2.0)}


# ---- 7. sampling rates -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000.7, -16000, 0, "16k", None])
def test_invalid_sampling_rates_are_named(captioner, rate):
    message = "need their sampling_rate" if rate is None else "sampling_rate must be a positive whole number"
    with pytest.raises(AudioInputError, match=message):
        captioner(tone(), sampling_rate=rate)
    assert captioner(tone(), sampling_rate=16000.0, max_new_tokens=2) == captioner(tone(), sampling_rate=16000,
                                                                                   max_new_tokens=2)


# ---- 8. audio shorter than one filterbank frame -----------------------------------------------------------------


def test_audio_shorter_than_one_frame_is_padded(ast_captioner):
    ten_ms = tone(0.01)
    padded = np.pad(ten_ms, (0, 400 - ten_ms.size))
    assert ast_captioner(ten_ms, sampling_rate=RATE, max_new_tokens=3) == ast_captioner(
        padded, sampling_rate=RATE, max_new_tokens=3)
    clip = tone(0.65)  # the 0.64 s window, then a 10 ms tail: captioned as the last full window, never alone
    chunks = ast_captioner(clip, sampling_rate=RATE, max_new_tokens=3)[0]["chunks"]
    assert [c["timestamp"] for c in chunks] == [(0.0, 0.64), (0.01, 0.65)]
    with pytest.raises(AudioInputError, match="empty"):
        ast_captioner(np.zeros(0, np.float32), sampling_rate=RATE)


# ---- 10. what is wrong with a file, in our words ---------------------------------------------------------------


@needs_ffmpeg
def test_undecodable_files_say_what_is_wrong(captioner, tmp_path, caplog):
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x48:rate=10", "-pix_fmt", "yuv420p", tmp_path / "mute.mp4")
    (tmp_path / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(20000))
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-ar", RATE, tmp_path / "whole.mp3")
    whole = (tmp_path / "whole.mp3").read_bytes()
    (tmp_path / "cut.mp3").write_bytes(whole[: len(whole) // 2])
    cases = {"mute.mp4": "has no audio stream", "noise.mp3": "not an audio or video file that FFmpeg can read"}
    for name, message in cases.items():
        with pytest.raises(AudioInputError, match=message) as error:
            captioner(str(tmp_path / name), max_new_tokens=2)
        assert name in str(error.value)
        assert not any(word in str(error.value) for word in ("report an issue", ".cpp", "torchcodec"))
    with caplog.at_level(logging.WARNING):
        (result,) = captioner(str(tmp_path / "cut.mp3"), max_new_tokens=2)
    decoded = [c["timestamp"] for c in result["chunks"]]
    assert decoded[0] == (0.0, 1.0) and 1 <= len(decoded) < 3  # what decoded, not "empty"
    assert "then failed" in caplog.text and "truncated" in caplog.text


# ---- 11. which item of a batch ------------------------------------------------------------------------------------


def test_batch_errors_name_the_item(captioner):
    bad = tone()
    bad[100] = np.nan
    with pytest.raises(AudioInputError, match=r"input 1 of 3 \(ndarray\) contains NaN"):
        captioner([tone(), bad, tone()], sampling_rate=RATE, batch_size=2)


# ---- the command: 8, 10, 12 through `dali-hf caption` -------------------------------------------------------------


@pytest.mark.slow
@needs_ffmpeg
def test_caption_command_on_a_folder_of_real_media(ast_folder, tmp_path):
    """Points 2, 6, 8, 10 and 12: a short file does not end the batch, long audio is written as chunks, silence is
    said, broken files are named in our words, an empty folder is warned about; exit 0 since some were captioned."""
    media, empty = tmp_path / "media", tmp_path / "empty"
    media.mkdir()
    empty.mkdir()
    soundfile.write(media / "a-short.wav", tone(0.01), RATE)
    soundfile.write(media / "b-long.wav", tone(1.5), RATE)
    soundfile.write(media / "c-silent.wav", np.zeros(RATE // 2, np.float32), RATE)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=660:duration=0.5", "-ac", 2, "-ar", 44100, media / "d-stereo.flac")
    ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x48:rate=10", "-pix_fmt", "yuv420p", media / "e-mute.mp4")
    output = tmp_path / "captions.jsonl"
    result = run_cli("caption", media, empty, "--model", ast_folder, "--batch-size", 4, "--max-new-tokens", 3,
                     "--output", output)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {os.path.basename(r["file"]): r for r in map(json.loads, output.read_text().splitlines())}
    assert "caption" in rows["a-short.wav"] and "caption" in rows["d-stereo.flac"]
    assert "caption" not in rows["b-long.wav"]
    # the 0.22 s tail is captioned as the last full window
    assert [c["timestamp"] for c in rows["b-long.wav"]["chunks"]] == [[0.0, 0.64], [0.64, 1.28], [0.86, 1.5]]
    assert rows["c-silent.wav"] == {"file": str(media / "c-silent.wav"), "caption": "silence", "silent": True}
    assert "has no audio stream" in rows["e-mute.mp4"]["error"]
    assert "4 of 5 files captioned" in result.stdout
    assert f"no audio or video file in {empty}" in result.stderr

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "noise.mp3").write_bytes(np.random.default_rng(1).bytes(5000))
    failed = run_cli("caption", tmp_path / "bad", "--model", ast_folder, "--output", tmp_path / "bad.jsonl")
    assert failed.returncode == 1 and "no file could be captioned" in failed.stderr
    assert "not an audio or video file" in failed.stdout
    nothing = run_cli("caption", empty, "--model", ast_folder, "--output", tmp_path / "none.jsonl")
    assert nothing.returncode == 1 and "nothing to caption" in nothing.stderr


# ---- 9 and 14: argument errors and help, at once -------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["caption", "x.wav", "--model", "m", "--frame", "foo"], "argument --frame"),
    (["caption", "x.wav", "--model", "m", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["caption", "x.wav", "--model", "m", "--chunk-length-s", "-1"], "argument --chunk-length-s: must be positive"),
    (["push", "folder", "--repo-id", "org/name", "--eval-results", "x.json"], "argument --eval-results"),
    (["push", "folder", "--repo-id", "org/name", "--eval-results", "AudioCaps=."], "this is a folder"),
    (["push", "folder", "--repo-id", "not a/repo id"], "is not a Hub repo id"),
    (["evaluate", "--model", "m", "--data", "d", "--output-dir", "o", "--batch-size", "-3"], "argument --batch-size"),
])
def test_argument_errors_are_argparse_errors(args, message, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_help_is_immediate_and_complete():
    timed = subprocess.run([sys.executable, "-X", "importtime", DALI_HF, "--help"], capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time")}
    assert timed.returncode == 0 and "torch" not in imported and "transformers" not in imported
    start = time.perf_counter()
    result = run_cli("--help")
    seconds = time.perf_counter() - start
    print(f"dali-hf --help: {seconds:.2f} s")
    assert result.returncode == 0 and seconds < 2.0  # about 0.2 s; slack for a loaded machine
    assert run_cli("--version").stdout.startswith("dali-hf ")
    caption = run_cli("caption", "--help").stdout
    assert "{audio,audiovisual,image}" in caption and "(default: greedy)" in caption and "(default: 64)" in caption
    assert "--preset" in run_cli("pseudo-caption", "--help").stdout
    align = run_cli("align", "--help").stdout
    assert all(flag in align for flag in ("--objective", "--solver", "--output_dir", "--model", "--data"))
    assert "(default: attentive_ot)" in " ".join(align.split())
