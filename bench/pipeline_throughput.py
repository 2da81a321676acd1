"""Captions per second of pipeline("audio-captioning") at batch 1 (one clip at a time, the reference code's way)
and batch 16, on a tiny captioner (Whisper-style encoder, 1-second windows), same clips, same run."""

import tempfile
import time

import numpy as np
from transformers import pipeline

from dali_hf.testing import tiny_captioner


def main(num_clips: int = 64, new_tokens: int = 16) -> dict:
    model, processor, _ = tiny_captioner("whisper")
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        captioner = pipeline("audio-captioning", model=folder)
    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(8000)).astype(np.float32) for _ in range(num_clips)]
    settings = dict(sampling_rate=16000, max_new_tokens=new_tokens, generate_kwargs={"min_new_tokens": new_tokens})
    captioner(clips[:2], batch_size=2, **settings)  # warm-up
    start = time.perf_counter()
    one_by_one = [captioner(clip, **settings) for clip in clips]
    loop_seconds = time.perf_counter() - start
    start = time.perf_counter()
    batched = captioner(clips, batch_size=16, **settings)
    batch_seconds = time.perf_counter() - start
    same = sum(a == b for a, b in zip(one_by_one, batched, strict=True))
    print(f"pipeline throughput, {num_clips} clips of 0.5 s, {new_tokens} new tokens (tiny model, CPU)")
    print(f"  batch 1 (one clip at a time)  {num_clips / loop_seconds:7.1f} captions/s")
    print(f"  batch 16                      {num_clips / batch_seconds:7.1f} captions/s   "
          f"ratio {loop_seconds / batch_seconds:.2f}x (goal >= 4x); identical captions {same}/{num_clips}")
    return {"batch1_per_s": num_clips / loop_seconds, "batch16_per_s": num_clips / batch_seconds,
            "ratio": loop_seconds / batch_seconds}


if __name__ == "__main__":
    main()
