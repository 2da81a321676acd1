"""Captions per second of `dali-hf caption` on a folder, one process against two (`accelerate launch
--num_processes 1` and `2`, one thread each), same clips, same run, tiny captioner (Whisper-style encoder). The time
is the command's whole run, model loading and the merge of the shares included; both commands are alternated,
best of `repeats` each."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile

from dali_hf.testing import saved_captioner, tiny_llava_parts

ROOT = Path(__file__).parents[1]


def _caption(folder: Path, model: Path, output: Path, processes: int, new_tokens: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", str(processes),
               "--mixed_precision", "no", str(Path(sys.executable).with_name("dali-hf")), "caption",
               str(folder), "--model", str(model), "--batch-size", "8", "--max-new-tokens", str(new_tokens),
               "--output", str(output), "--overwrite", "--quiet"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main(num_clips: int = 192, new_tokens: int = 16, repeats: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = saved_captioner(tiny_llava_parts(), "whisper", work / "model")
        rng = np.random.default_rng(0)
        (work / "clips").mkdir()
        for i in range(num_clips):  # 0.5 to 1 s: the shares are balanced by duration
            samples = (0.1 * rng.standard_normal(int(16000 * (0.5 + 0.5 * (i % 5) / 4)))).astype(np.float32)
            soundfile.write(work / "clips" / f"clip{i:04d}.wav", samples, 16000)
        seconds = {1: [], 2: []}
        for _ in range(repeats):
            for processes in (1, 2):
                seconds[processes].append(_caption(work / "clips", model, work / f"captions-{processes}.jsonl",
                                                   processes, new_tokens))
        same = (work / "captions-1.jsonl").read_text() == (work / "captions-2.jsonl").read_text()
    one, two = min(seconds[1]), min(seconds[2])
    print(f"dali-hf caption, {num_clips} clips of 0.5-1 s, batch 8, {new_tokens} new tokens (tiny model, CPU, one "
          f"thread per process; whole command, best of {repeats})")
    print(f"  1 process    {num_clips / one:7.1f} captions/s ({one:.1f} s)")
    print(f"  2 processes  {num_clips / two:7.1f} captions/s ({two:.1f} s)   ratio {one / two:.2f}x; "
          f"identical output files: {same}")
    return {"one_per_s": num_clips / one, "two_per_s": num_clips / two, "ratio": one / two, "same": same}


if __name__ == "__main__":
    main()
