"""Every ```python block of README.md runs as written, with model names swapped for tiny local folders.

How to write a README block that this test runs:
- Each ```python block runs on its own, with fresh globals, in a temporary working folder holding the media the
  examples name: dog.wav, a.flac, b.mp3, c.mp4 (a video with sound), hour.flac (longer than the tiny encoder's
  1 s window), videos/ (two short videos with sound) and frames/dog.png, frames/rain.png. So a block defines every
  variable it uses.
- These model names are replaced by tiny folders built here (same kinds of model, random weights), nothing else:
  `outputs/demo/models/<name>` and `org/dali-attentive-ot` (a LlavaAudio captioner), `llava-hf/llava-1.5-7b-hf`
  (a LLaVA-1.5 model and processor), `MIT/ast-finetuned-audioset-10-10-0.4593` (an AST encoder and its feature
  extractor); `device_map="cuda"` becomes `device_map="cpu"`. The test runs offline: any other Hub id fails.
- ```bash, ```yaml and other blocks are not run (they need make, a GPU, the Hub or real data). A ```python block
  that truly cannot run here gets `<!-- readme: skip (reason) -->` on the line right above its fence; the test
  reports it as skipped with that reason. Blocks that train (`.train(`) or run the pipeline are marked slow.
"""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from transformers import ASTModel

from dali_hf.testing import saved_captioner, tiny_audio_encoder

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"<!--\s*readme:\s*skip\s*\((.+)\)\s*-->")


def readme_blocks() -> list[tuple[int, str, str | None]]:
    """(line number, code, skip reason or None) of every ```python block, top-level or indented in a list."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index].strip())
        if match and match.group(1):
            indent = len(lines[index]) - len(lines[index].lstrip())
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            if match.group(1) == "python":
                skip = SKIP.search(lines[index - 1]) if index else None
                code = "\n".join(line[indent:] for line in lines[index + 1:end])
                blocks.append((index + 1, code, skip.group(1) if skip else None))
            index = end
        index += 1
    return blocks


BLOCKS = readme_blocks()


def test_the_readme_has_the_quickstart_blocks():
    codes = [code for _, code, _ in BLOCKS]
    assert len(BLOCKS) >= 5
    assert any("AutoModel.from_pretrained" in code and "model.generate" in code for code in codes)
    assert any('pipeline("audio-captioning"' in code for code in codes)


@pytest.fixture(scope="module")
def local_models(tmp_path_factory, llava_parts) -> dict[str, str]:
    """Hub id or demo path -> tiny local folder."""
    root = tmp_path_factory.mktemp("readme-models")
    saved_captioner(llava_parts, "whisper", root / "captioner")
    llava, llava_processor = llava_parts
    llava.save_pretrained(root / "llava")
    llava_processor.save_pretrained(root / "llava")
    ast_config, ast_features = tiny_audio_encoder("ast")
    ASTModel(ast_config).save_pretrained(root / "ast")
    ast_features.save_pretrained(root / "ast")
    return {"org/dali-attentive-ot": str(root / "captioner"), "llava-hf/llava-1.5-7b-hf": str(root / "llava"),
            "MIT/ast-finetuned-audioset-10-10-0.4593": str(root / "ast")}


def localised(code: str, models: dict[str, str]) -> str:
    code = re.sub(r"outputs/demo/models/[\w.-]+", models["org/dali-attentive-ot"], code)
    for name, folder in models.items():
        code = code.replace(name, folder)
    return code.replace('device_map="cuda"', 'device_map="cpu"')


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("readme-media")
    rate = 16000
    t = np.arange(rate) / rate
    soundfile.write(folder / "dog.wav", (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), rate)
    soundfile.write(folder / "a.flac", (0.2 * np.sin(2 * np.pi * 500 * t)).astype(np.float32), rate)
    soundfile.write(folder / "hour.flac", np.tile(0.2 * np.sin(2 * np.pi * 700 * t), 3)[: int(2.5 * rate)], rate)
    (folder / "frames").mkdir()
    for name, color in (("dog", (200, 40, 40)), ("rain", (40, 40, 200))):
        Image.new("RGB", (32, 32), color).save(folder / "frames" / f"{name}.png")
    if shutil.which("ffmpeg"):
        def ffmpeg(*args):
            subprocess.run(["ffmpeg", "-loglevel", "error", "-y", *map(str, args)], check=True)

        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-ar", rate, folder / "b.mp3")
        (folder / "videos").mkdir()
        for index, path in enumerate([folder / "c.mp4", folder / "videos" / "one.mp4", folder / "videos" / "two.mp4"]):
            ffmpeg("-f", "lavfi", "-i", "testsrc=duration=1:size=64x48:rate=10", "-f", "lavfi", "-i",
                   f"sine=frequency={300 + 200 * index}:duration=1", "-pix_fmt", "yuv420p", "-shortest", path)
    return folder


def _param(line: int, code: str, skip: str | None):
    slow = ".train(" in code or "pipeline(" in code
    return pytest.param(line, code, skip, id=f"README.md:{line}", marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("line, code, skip", [_param(*block) for block in BLOCKS])
def test_readme_block_runs_as_written(line, code, skip, local_models, media, tmp_path, monkeypatch):
    if skip:
        pytest.skip(f"README.md:{line}: {skip}")
    if shutil.which("ffmpeg") is None and re.search(r"\.mp[34]|videos/", code):
        pytest.skip("ffmpeg is not installed: the block's mp3 / mp4 media cannot be made")
    shutil.copytree(media, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    exec(compile(localised(code, local_models), f"README.md:{line}", "exec"), {"__name__": "__readme__"})
