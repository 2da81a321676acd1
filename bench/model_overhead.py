"""Overhead of LlavaAudio over plain LLaVA for the same image-only greedy generation (tiny models, CPU).

Both models share the same LLaVA modules, so any difference is LlavaAudio's own bookkeeping.
"""

import time

import numpy as np
import torch
from PIL import Image

from dali_hf.testing import tiny_captioner


def _interleaved_best(first, second, repeats: int = 30) -> tuple[float, float]:
    """Best times of two callables run alternately, so drift in machine load hits both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for index, fn in enumerate((first, second)):
            start = time.perf_counter()
            fn()
            best[index] = min(best[index], time.perf_counter() - start)
    return best[0], best[1]


def main(batch_size: int = 8, new_tokens: int = 32) -> dict:
    model, processor, llava = tiny_captioner("ast")
    images = [Image.fromarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8)) for i in range(batch_size)]
    prompts = ["USER: <image>\ndescribe this image ASSISTANT:"] * batch_size
    inputs = processor(text=prompts, images=images, return_tensors="pt")
    settings = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    with torch.inference_mode():
        llava.generate(**inputs, **settings)  # warm-up
        model.generate(**inputs, **settings)
        baseline, ours = _interleaved_best(lambda: llava.generate(**inputs, **settings),
                                           lambda: model.generate(**inputs, **settings))
    ratio = ours / baseline
    print(f"image-only greedy generation, batch {batch_size}, {new_tokens} new tokens (tiny models, CPU)")
    print(f"  plain LLaVA (baseline) {baseline * 1000:8.1f} ms")
    print(f"  LlavaAudio             {ours * 1000:8.1f} ms   ratio {ratio:.3f} (goal <= 1.05)")
    return {"baseline_s": baseline, "llava_audio_s": ours, "ratio": ratio}


if __name__ == "__main__":
    main()
