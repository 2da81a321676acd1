"""Captioning big collections: the outputs of `dali-hf caption`, `pseudo-caption` and `evaluate` (refused, resumed,
overwritten, locked, written whole), the folder scan, the mark of a clip decoded in part, and the same files from
two processes as from one (`accelerate launch --num_processes 2`, CPU processes over gloo).

Media are made here: soundfile for wav, ffmpeg (installed by `make install`) for the other formats.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from transformers import pipeline

from dali_hf.captioning import caption_files, scan_media
from dali_hf.modeling.media import (
    AUDIO_EXTENSIONS,
    MEDIA_EXTENSIONS,
    VIDEO_EXTENSIONS,
    AudioSource,
    frame_at,
    media_duration,
)
from dali_hf.testing import pairs_dataset, saved_captioner
from dali_hf.trainers.jobs import (
    OutputError,
    OutputLock,
    check_output,
    check_output_dir,
    read_jsonl,
    split_by_weight,
)

RATE = 16000
DALI_HF = str(Path(sys.executable).with_name("dali-hf"))
ROOT = Path(__file__).parents[1]
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *map(str, args)], check=True)


def write_clips(folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` wav files of noise, of different lengths (0.2 to 0.9 s)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"clip{i:02d}.wav"
        soundfile.write(path, (0.1 * rng.standard_normal(int(RATE * (0.2 + 0.1 * (i % 8))))).astype(np.float32), RATE)
        paths.append(str(path))
    return paths


def run(*args, timeout=600):
    return subprocess.run([*map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory, llava_parts):
    """A saved captioner whose encoder window is 1 s (tiny Whisper encoder)."""
    return saved_captioner(llava_parts, "whisper", tmp_path_factory.mktemp("whisper-captioner"))


@pytest.fixture(scope="module")
def captioner(whisper_folder):
    return pipeline("audio-captioning", model=str(whisper_folder))


# ---- output files: refused, overwritten, resumed, locked ---------------------------------------------------------


def test_outputs_are_checked_before_anything_runs(tmp_path):
    existing = tmp_path / "captions.jsonl"
    existing.write_text('{"file": "a.wav", "caption": "a dog"}\n')
    with pytest.raises(OutputError, match=r"already exists: pass --resume .* or --overwrite"):
        check_output(str(existing))
    check_output(str(existing), resume=True)
    check_output(str(existing), overwrite=True)
    with pytest.raises(OutputError, match="exclude each other"):
        check_output(str(existing), resume=True, overwrite=True)
    with pytest.raises(OutputError, match=f"--output {tmp_path} is a folder"):
        check_output(str(tmp_path))
    with pytest.raises(OutputError, match=f"the folder {tmp_path / 'nowhere'} does not exist"):
        check_output(str(tmp_path / "nowhere" / "captions.jsonl"))
    (tmp_path / "new.jsonl.part-1-of-2").write_text("")  # the shares of an interrupted run are an output too
    with pytest.raises(OutputError, match="already exists"):
        check_output(str(tmp_path / "new.jsonl"))
    # folders of pseudo-caption and evaluate: created when missing; a file, or one that holds an output, refused
    check_output_dir(str(tmp_path / "eval"), ["captions.jsonl"])
    with pytest.raises(OutputError, match=f"--output-dir {existing} is a file: give a folder"):
        check_output_dir(str(existing), ["captions.jsonl"])
    with pytest.raises(OutputError, match=f"{existing} already exists: pass --resume"):
        check_output_dir(str(tmp_path), ["captions.jsonl"])
    with pytest.raises(OutputError, match="does not exist"):
        check_output_dir(str(tmp_path / "a" / "b"), ["captions.jsonl"])


def test_existing_output_refused_overwritten_or_resumed(captioner, tmp_path):
    files = write_clips(tmp_path / "clips", 5)
    output = str(tmp_path / "captions.jsonl")
    settings = dict(batch_size=2, progress=False, sampling_rate=RATE, max_new_tokens=4)
    fresh = caption_files(captioner, files, output, **settings)
    expected = read_jsonl(output)
    assert fresh["captioned"] == 5 and [row["file"] for row in expected] == files

    with pytest.raises(OutputError, match="already exists"):
        caption_files(captioner, files, output, **settings)
    assert read_jsonl(output) == expected  # refused: nothing lost

    # a run killed after two lines, the third cut halfway
    lines = Path(output).read_text().splitlines(keepends=True)
    Path(output).write_text("".join(lines[:2]) + lines[2][:15])
    resumed = caption_files(captioner, files, output, resume=True, **settings)
    assert read_jsonl(output) == expected and resumed["resumed"] == 2
    assert Path(output).read_text().count("\n") == 5

    not_ours = tmp_path / "notes.txt"  # --resume on a file that is not such an output: refused, nothing cut
    not_ours.write_text("a line\n{not json\n")
    with pytest.raises(OutputError, match=f"{not_ours} is not a json lines file written by this command .line 1"):
        caption_files(captioner, files, str(not_ours), resume=True, **settings)
    assert not_ours.read_text() == "a line\n{not json\n"

    Path(output).write_text('{"file": "other.wav", "caption": "x"}\n')
    caption_files(captioner, files, output, overwrite=True, **settings)
    assert read_jsonl(output) == expected


def test_a_held_lock_refuses_at_once_and_a_stale_one_does_not_block(captioner, tmp_path):
    files = write_clips(tmp_path / "clips", 2)
    output = str(tmp_path / "captions.jsonl")
    with OutputLock(output):
        start = time.perf_counter()
        with pytest.raises(OutputError, match=rf"{output} is being written by another process \(pid {os.getpid()}"):
            caption_files(captioner, files, output, progress=False, sampling_rate=RATE, max_new_tokens=4)
        assert time.perf_counter() - start < 5
    assert not os.path.exists(output + ".lock")
    Path(output + ".lock").write_text("999999\n")  # left by a killed process: no process holds its flock
    caption_files(captioner, files, output, progress=False, sampling_rate=RATE, max_new_tokens=4)
    assert [row["file"] for row in read_jsonl(output)] == files and not os.path.exists(output + ".lock")


def test_split_by_weight_is_contiguous_complete_and_balanced():
    rng = np.random.default_rng(0)
    for _ in range(50):
        weights = list(rng.uniform(0.1, 10, rng.integers(1, 30)))
        parts = int(rng.integers(1, 5))
        ranges = split_by_weight(weights, parts)
        assert len(ranges) == parts and [i for r in ranges for i in r] == list(range(len(weights)))
        # no share is heavier than an even share by more than the heaviest item
        assert max(sum(weights[i] for i in r) for r in ranges) <= sum(weights) / parts + max(weights) + 1e-9
    assert split_by_weight([1, 1, 1, 1, 4], 2) == [range(0, 4), range(4, 5)]  # by duration, not by count
    assert split_by_weight([], 2) == [range(0, 0), range(0, 0)]


# ---- the folder scan and the mark of a clip decoded in part ------------------------------------------------------


@needs_ffmpeg
def test_the_folder_scan_takes_every_format_ffmpeg_decodes(tmp_path):
    """Each listed extension is made with ffmpeg and decodes to its 0.5 s; other files are counted as skipped."""
    made = {}
    for extension in AUDIO_EXTENSIONS:
        path = tmp_path / f"sound{extension}"
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", path)
        made[str(path)] = extension
    codecs = {".3gp": ["-c:v", "mpeg4", "-c:a", "aac", "-ar", 16000, "-ac", 1]}
    for extension in VIDEO_EXTENSIONS:
        path = tmp_path / f"film{extension}"
        size = "176x144" if extension == ".3gp" else "64x48"
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=0.5", "-f", "lavfi", "-i",
               f"testsrc=duration=0.5:size={size}:rate=25", "-shortest", *codecs.get(extension, []), path)
        made[str(path)] = extension
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "cover.png").write_bytes(b"")
    (tmp_path / "README").write_text("")
    found, skipped = scan_media([str(tmp_path)])
    assert sorted(found) == sorted(made)
    assert skipped == {".txt": 1, ".png": 1, "": 1}
    for path in found:
        source = AudioSource(path)
        assert abs(source.duration - 0.5) < 0.1, (path, source.duration)
        assert source.read(0.0, 0.4).shape[1] > 0.3 * source.sampling_rate, path
    assert {".oga", ".opus", ".aac", ".aiff", ".webm"} <= set(MEDIA_EXTENSIONS)


@needs_ffmpeg
def test_times_count_from_the_start_of_a_stream_whose_clock_starts_later(tmp_path):
    """A container whose streams start at 5 s on their clock (ffmpeg's -output_ts_offset, as in video cut from a
    broadcast) reads as the same file starting at 0: the same duration and samples, the same frames at the same times
    (the video turns from red to blue at 1.5 s). The audio of an MPEG transport stream, whose clock never starts at
    0, reads from 0 s too."""
    source = ["-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-f", "lavfi", "-i",
              "color=c=red:s=64x48:r=25:d=1.5[a];color=c=blue:s=64x48:r=25:d=1.5[b];[a][b]concat=n=2:v=1:a=0",
              "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    plain, offset = tmp_path / "plain.mkv", tmp_path / "offset.mkv"
    ffmpeg(*source, plain)
    ffmpeg(*source, "-output_ts_offset", 5, offset)
    expected = AudioSource(plain).read(0.0, 1.0)
    assert expected.shape[1] > 0.9 * AudioSource(plain).sampling_rate
    np.testing.assert_array_equal(AudioSource(offset).read(0.0, 1.0), expected)
    assert AudioSource(offset).duration == pytest.approx(AudioSource(plain).duration, abs=0.05)
    assert media_duration(offset) == pytest.approx(media_duration(plain), abs=0.05)  # how work is split
    np.testing.assert_array_equal(AudioSource(offset).read(2.0, 2.9), AudioSource(plain).read(2.0, 2.9))
    for frame, colour in (("first", "red"), (0.5, "red"), ("middle", "blue"), (2.5, "blue")):
        for path in (plain, offset):
            red, _, blue = frame_at(path, frame).getpixel((32, 24))
            assert (red > 200 and blue < 50) if colour == "red" else (blue > 200 and red < 50), (path, frame)
    stream = tmp_path / "broadcast.ts"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "mp2", stream)
    audio = AudioSource(stream)
    assert audio.read(0.0, 0.5).shape[1] == pytest.approx(0.5 * audio.sampling_rate, abs=2)


@needs_ffmpeg
def test_a_clip_decoded_in_part_is_captioned_and_marked(captioner, tmp_path):
    whole, cut = tmp_path / "whole.mp3", tmp_path / "cut.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=3", "-ar", RATE, whole)
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    output = tmp_path / "captions.jsonl"
    caption_files(captioner, [str(cut), str(whole)], str(output), progress=False, max_new_tokens=4)
    cut_row, whole_row = read_jsonl(str(output))
    assert "partial" not in whole_row and "error" not in cut_row
    partial = cut_row["partial"]
    assert partial["duration_s"] == pytest.approx(3.0, abs=0.1)
    assert 0.5 < partial["decoded_s"] < 2.5


# ---- through the command: a second writer, a kill, and two processes ---------------------------------------------


def _caption_command(whisper_folder, inputs, output, *extra):
    return [DALI_HF, "caption", *map(str, inputs), "--model", str(whisper_folder), "--batch-size", "1",
            "--max-new-tokens", "12", "--output", str(output), "--quiet", *map(str, extra)]


def _start_caption(whisper_folder, inputs, output, *extra):
    return subprocess.Popen(_caption_command(whisper_folder, inputs, output, *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def _wait_for_lines(path: Path, count: int, process, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {count} lines: {process.poll()} {process.stderr.read()[-2000:]}")


@pytest.mark.slow  # six runs of the command
def test_command_refuses_a_second_writer_and_resumes_after_a_kill(whisper_folder, tmp_path):
    files = write_clips(tmp_path / "clips", 40)
    (tmp_path / "clips" / "notes.txt").write_text("not audio")
    output = tmp_path / "captions.jsonl"

    first = _start_caption(whisper_folder, [tmp_path / "clips"], output)
    _wait_for_lines(output, 1, first)
    first.send_signal(signal.SIGSTOP)  # frozen midway, holding the lock
    try:
        assert output.read_bytes().count(b"\n") < 40
        start = time.perf_counter()
        second = run(DALI_HF, "caption", tmp_path / "clips", "--model", whisper_folder, "--output", output,
                     "--resume")
        print(f"second writer refused after {time.perf_counter() - start:.1f} s")
        assert second.returncode == 1 and "is being written by another process" in second.stderr, \
            second.stderr[-2000:]
        assert "Loading weights" not in second.stderr  # refused before its model loads
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    expected = read_jsonl(str(output))
    assert [row["file"] for row in expected] == files
    assert "40 of 40 files captioned" in out and "1 file skipped by extension (1 .txt)" in out

    refused = run(DALI_HF, "caption", tmp_path / "clips", "--model", whisper_folder, "--output", output)
    assert refused.returncode == 1 and f"error: {output} already exists: pass --resume" in refused.stderr
    assert "Loading weights" not in refused.stderr
    assert read_jsonl(str(output)) == expected  # before the model loads, and nothing lost

    output.unlink()
    interrupted = _start_caption(whisper_folder, [tmp_path / "clips"], output)
    _wait_for_lines(output, 1, interrupted)
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C: what was kept and how to go on, no traceback
    _, err = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert f"interrupted: every line written so far is kept in {output}" in err and "with --resume" in err
    assert 1 <= len(read_jsonl(str(output))) < 40 and not os.path.exists(str(output) + ".lock")

    killed = _start_caption(whisper_folder, [tmp_path / "clips"], output, "--resume")
    _wait_for_lines(output, len(read_jsonl(str(output))) + 1, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    written = read_jsonl(str(output))
    assert 2 <= len(written) < 40 and os.path.exists(str(output) + ".lock")  # killed midway, its lock file left
    with open(output, "a") as handle:
        handle.write('{"file": "' + files[len(written)] + '", "capt')  # as a kill during a write would leave it
    resumed = run(*_caption_command(whisper_folder, [tmp_path / "clips"], output, "--resume"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_jsonl(str(output)) == expected  # each file once, in order, as the uninterrupted run wrote them
    assert output.read_text().count("\n") == 40
    assert f"({len(written)} of them already there)" in resumed.stdout


def _launch(*args):
    """The command under `accelerate launch --num_processes 2` with the shipped DDP config (CPU processes here)."""
    return run(sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               ROOT / "configs" / "accelerate" / "ddp.yaml", "--num_processes", 2, "--mixed_precision", "no", *args)


@pytest.mark.slow  # three launches of two processes
def test_two_processes_write_the_files_of_one(whisper_folder, captioner, tmp_path):
    """caption, pseudo-caption and evaluate under `accelerate launch --num_processes 2` against the same job in one
    process (greedy decoding): the same files, each input once, in input order; caption also resumes per share."""
    files = write_clips(tmp_path / "clips", 9)
    one = tmp_path / "one.jsonl"
    caption_files(captioner, files, str(one), batch_size=2, progress=False, max_new_tokens=6)
    expected = read_jsonl(str(one))
    two = tmp_path / "two.jsonl"
    # an interrupted two-process run: lines of each share, one cut by the kill
    lines = one.read_text().splitlines(keepends=True)
    two.write_text("".join(lines[:2]))
    Path(f"{two}.part-1-of-2").write_text(lines[6] + lines[7][:20])
    caption = _launch(DALI_HF, "caption", tmp_path / "clips", "--model", whisper_folder, "--batch-size", 2,
                      "--max-new-tokens", 6, "--output", two, "--resume")
    assert caption.returncode == 0, caption.stderr[-3000:]
    assert read_jsonl(str(two)) == expected and not list(tmp_path.glob("two.jsonl.*"))
    assert caption.stdout.count("files captioned") == 1  # the summary, from the main process only

    from transformers import AutoModel, AutoProcessor

    from dali_hf.trainers import generate_pseudo_captions

    pairs = pairs_dataset(7, seed=3)
    pairs.save_to_disk(tmp_path / "pairs")
    model, processor = AutoModel.from_pretrained(whisper_folder), AutoProcessor.from_pretrained(whisper_folder)
    generate_pseudo_captions(model, processor, pairs, str(tmp_path / "pseudo-one"), batch_size=2, max_new_tokens=6,
                             progress=False)
    # `python -m dali_hf.cli`: the `dali-hf` program does not register the Auto classes for pseudo-caption
    pseudo = _launch("-m", "dali_hf.cli", "pseudo-caption", "--model", whisper_folder, "--data", tmp_path / "pairs",
                     "--output-dir", tmp_path / "pseudo-two", "--batch-size", 2, "--max-new-tokens", 6)
    assert pseudo.returncode == 0, pseudo.stderr[-3000:]
    for name in ("pseudo_captions.jsonl", "skipped.jsonl"):
        assert (tmp_path / "pseudo-two" / name).read_text() == (tmp_path / "pseudo-one" / name).read_text()
    import datasets

    assert datasets.load_from_disk(tmp_path / "pseudo-two" / "dataset")["id"] == [f"clip{i}" for i in range(7)]

    from dali_hf.evaluation import evaluate_captioner, read_hf_dataset

    rows = datasets.Dataset.from_list([{"id": Path(f).stem, "audio": f, "caption": ["noise", "a hiss"]}
                                       for f in files] + [{"id": "gone", "audio": str(tmp_path / "gone.wav"),
                                                           "caption": ["x"]}])
    rows.save_to_disk(tmp_path / "bench")
    data, missing = read_hf_dataset(rows)
    evaluate_captioner(captioner, data, str(tmp_path / "eval-one"), batch_size=2, max_new_tokens=6,
                       metrics=["cider_d"], missing=missing, progress=False)
    evaluate = _launch(DALI_HF, "evaluate", "--model", whisper_folder, "--data", tmp_path / "bench",
                       "--output-dir", tmp_path / "eval-two", "--batch-size", 2, "--max-new-tokens", 6,
                       "--metrics", "cider_d")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    for name in ("captions.jsonl", "scores.json"):
        assert (tmp_path / "eval-two" / name).read_text() == (tmp_path / "eval-one" / name).read_text()
    assert evaluate.stdout.count("failed: gone: audio file not found") == 1
