"""Captions per second of `dali-hf caption` on a folder, one process against two (`accelerate launch
--num_processes 1` and `2`, one thread each), same clips, same run, tiny captioner (Whisper-style encoder).

Two rates: the command's whole run (start, model loading and the merge of the shares included), and the captioning
itself, measured as the extra time of `num_clips` over `few` clips (what a big collection costs per clip). The
commands are alternated, best of `repeats` each."""

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


def main(num_clips: int = 192, few: int = 8, new_tokens: int = 16, repeats: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        model = saved_captioner(tiny_llava_parts(), "whisper", work / "model")
        rng = np.random.default_rng(0)
        for folder, count in (("clips", num_clips), ("few", few)):
            (work / folder).mkdir()
            for i in range(count):  # 0.5 to 1 s: the shares are balanced by duration
                samples = (0.1 * rng.standard_normal(int(16000 * (0.5 + 0.5 * (i % 5) / 4)))).astype(np.float32)
                soundfile.write(work / folder / f"clip{i:04d}.wav", samples, 16000)
        seconds = {(processes, folder): [] for processes in (1, 2) for folder in ("clips", "few")}
        for _ in range(repeats):
            for processes in (1, 2):
                for folder in ("clips", "few"):
                    seconds[processes, folder].append(_caption(work / folder, model,
                                                               work / f"{folder}-{processes}.jsonl", processes,
                                                               new_tokens))
        same = (work / "clips-1.jsonl").read_text() == (work / "clips-2.jsonl").read_text()
    whole = {p: min(seconds[p, "clips"]) for p in (1, 2)}
    marginal = {p: max(whole[p] - min(seconds[p, "few"]), 1e-9) for p in (1, 2)}
    extra = num_clips - few
    print(f"dali-hf caption, {num_clips} clips of 0.5-1 s, batch 8, {new_tokens} new tokens (tiny model, CPU, one "
          f"thread per process; best of {repeats}); captioning = the time of {num_clips} clips less that of {few}")
    for p in (1, 2):
        print(f"  {p} process{'es' if p > 1 else '  '}  whole command {num_clips / whole[p]:6.1f} captions/s "
              f"({whole[p]:.1f} s)   captioning {extra / marginal[p]:6.1f} captions/s")
    print(f"  ratio 2 / 1: whole command {whole[1] / whole[2]:.2f}x, captioning {marginal[1] / marginal[2]:.2f}x; "
          f"identical output files: {same}")
    return {"whole_ratio": whole[1] / whole[2], "captioning_ratio": marginal[1] / marginal[2], "same": same,
            "one_per_s": extra / marginal[1], "two_per_s": extra / marginal[2]}


if __name__ == "__main__":
    main()
