"""Tiny models built from configs, a tokenizer built here, generated inputs: nothing is downloaded."""

import os
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from PIL import Image

from dali_hf import LlavaAudioForConditionalGeneration, LlavaAudioProcessor
from dali_hf.tiny import tiny_audio_encoder, tiny_llava, tiny_llava_processor, tiny_tokenizer

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def llava_parts():
    """(plain LLaVA model, its processor) at tiny size."""
    tokenizer, vocab_size = tiny_tokenizer()
    llava = tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"))
    return llava, tiny_llava_processor(tokenizer)


def build_captioner(llava_parts, kind: str):
    llava, llava_processor = llava_parts
    audio_config, feature_extractor = tiny_audio_encoder(kind)
    processor = LlavaAudioProcessor.from_llava(llava_processor, feature_extractor, audio_config=audio_config)
    torch.manual_seed(1)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor).eval()
    return model, processor


def saved_captioner(llava_parts, kind: str, folder):
    """`build_captioner`'s model and processor saved to `folder` (returned), as a user's captioner folder."""
    model, processor = build_captioner(llava_parts, kind)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=["ast", "whisper"])
def captioner(request, llava_parts):
    """(LlavaAudio model, processor) around the tiny LLaVA, for each tested audio encoder."""
    return build_captioner(llava_parts, request.param)


@pytest.fixture(scope="session")
def ast_captioner(llava_parts):
    return build_captioner(llava_parts, "ast")


def random_image(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def random_clip(seed: int, seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * rate))).astype(np.float32)


BLOCK_DALI_HF = textwrap.dedent(
    """
    import importlib.abc
    import sys


    class _BlockDaliHf(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "dali_hf" or name.startswith("dali_hf."):
                raise ModuleNotFoundError(f"blocked: {name}")


    sys.meta_path.insert(0, _BlockDaliHf())
    """
)


def run_without_dali_hf(script: str, *args, tmp_path) -> subprocess.CompletedProcess:
    """Run `script` (with `args` as sys.argv[1:]) in a fresh offline Python where dali_hf cannot be imported, as on a
    machine without the package."""
    path = tmp_path / "without_dali_hf.py"
    path.write_text(BLOCK_DALI_HF + textwrap.dedent(script))
    return subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf")})
