"""save_pretrained / Auto classes / trust_remote_code without dali_hf / from_llava from llava-hf folders, for the
AST, Whisper and CAV-MAE encoders."""

import json
import re
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)

from dali_hf import LlavaAudioForConditionalGeneration, LlavaAudioProcessor
from dali_hf.testing import random_clip, random_image, run_without_dali_hf, tiny_audio_encoder, tiny_captioner

GREEDY = dict(max_new_tokens=5, do_sample=False, min_new_tokens=5)


def _inputs(processor):
    return processor(text=processor.caption_prompt(image=True, audio=True, prefix=True), images=random_image(3),
                     audio=random_clip(3), sampling_rate=16000, return_tensors="pt")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, captioner):
    model, processor = captioner
    folder = tmp_path_factory.mktemp("dali")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, model, processor


def test_save_and_auto_load_give_identical_outputs(saved):
    folder, model, processor = saved
    reference_inputs = _inputs(processor)
    loaded_processor = AutoProcessor.from_pretrained(folder)
    assert type(loaded_processor) is LlavaAudioProcessor
    inputs = _inputs(loaded_processor)
    for key in reference_inputs:
        assert torch.equal(inputs[key], reference_inputs[key]), key

    with torch.no_grad():
        expected = model(**reference_inputs).logits
    for auto_class in (AutoModel, AutoModelForImageTextToText):
        loaded = auto_class.from_pretrained(folder).eval()
        assert type(loaded) is LlavaAudioForConditionalGeneration
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).logits, expected)
        assert torch.equal(loaded.generate(**inputs, **GREEDY), model.generate(**reference_inputs, **GREEDY))
    assert AutoConfig.from_pretrained(folder).model_type == "llava_audio"


def test_saved_folder_has_remote_code(saved):
    folder, _, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_llava_audio.LlavaAudioForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_llava_audio.LlavaAudioConfig"
    for name in ("configuration_llava_audio.py", "modeling_llava_audio.py", "processing_llava_audio.py"):
        assert (folder / name).is_file(), name
    assert "model.audio_tower." in " ".join(load_file(folder / "model.safetensors"))


REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    folder = sys.argv[1]
    import torch
    from transformers import AutoModel, AutoProcessor
    try:
        import dali_hf  # noqa: F401
        raise SystemExit("dali_hf should not be importable here")
    except ModuleNotFoundError:
        pass
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "dali_hf" not in type(model).__module__, type(model).__module__
    import numpy as np
    from PIL import Image
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    clip = (0.1 * np.random.default_rng(3).standard_normal(16000)).astype(np.float32)
    inputs = processor(text=processor.caption_prompt(image=True, audio=True, prefix=True), images=image,
                       audio=clip, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits, sys.argv[2])
    print(type(model).__name__, type(processor).__name__)
    """
)


@pytest.mark.slow  # a fresh Python without dali_hf
def test_trust_remote_code_load_without_dali_hf(saved, tmp_path):
    folder, model, processor = saved
    out = tmp_path / "logits.pt"
    result = run_without_dali_hf(REMOTE_SCRIPT, folder, out, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LlavaAudioForConditionalGeneration LlavaAudioProcessor" in result.stdout
    with torch.no_grad():
        expected = model(**_inputs(processor)).logits
    assert torch.equal(torch.load(out), expected)


LEGACY_NAMES = [  # current name -> name in the published llava-hf checkpoints (before transformers 4.52)
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^lm_head\.", "language_model.lm_head."),
]


def _legacy_llava_hf_names(state_dict):
    renamed = {}
    for key, value in state_dict.items():
        for pattern, legacy in LEGACY_NAMES:
            key = re.sub(pattern, legacy, key)
        renamed[key] = value.contiguous()
    return renamed


def test_from_llava_paths_with_legacy_weight_names(llava_parts, tmp_path):
    llava, llava_processor = llava_parts
    llava_dir = tmp_path / "llava-hf"
    llava.save_pretrained(llava_dir)
    llava_processor.save_pretrained(llava_dir)
    weights = llava_dir / "model.safetensors"
    save_file(_legacy_llava_hf_names(load_file(weights)), weights, metadata={"format": "pt"})
    assert any(k.startswith("language_model.model.") for k in load_file(weights))

    audio_config, feature_extractor = tiny_audio_encoder("ast")
    feature_extractor.save_pretrained(tmp_path / "fe")
    processor = LlavaAudioProcessor.from_llava(str(llava_dir), str(tmp_path / "fe"), audio_config=audio_config)
    with pytest.raises(ValueError, match="from_llava needs the <audio> and <prefix> token ids: pass processor="):
        LlavaAudioForConditionalGeneration.from_llava(str(llava_dir), audio_config)
    model = LlavaAudioForConditionalGeneration.from_llava(str(llava_dir), audio_config, processor=processor)
    assert (model.config.audio_token_id, model.config.prefix_token_id) == (
        processor.audio_token_id, processor.prefix_token_id)
    ours = model.state_dict()
    for name, tensor in llava.state_dict().items():
        assert torch.equal(ours[name], tensor), name


# ---- the captioner around the CAV-MAE encoder --------------------------------------------------------------


@pytest.fixture(scope="module")
def cav_captioner(llava_parts):
    """A captioner around the tiny CAV-MAE encoder, whose code ships in its folder for remote use."""
    return tiny_captioner("cav_mae", seed=6, llava_parts=llava_parts)[:2]


def _cav_mae_audio_inputs(processor):
    return processor(
        text=[processor.caption_prompt(audio=True, prefix=True), processor.caption_prompt(audio=True)],
        audio=[random_clip(7), random_clip(8, seconds=0.3)],
        sampling_rate=16000,
        return_tensors="pt",
    )


CAV_MAE_REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    folder = sys.argv[1]
    import numpy as np
    import torch
    from transformers import AutoModel, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    for part in (model, model.model.audio_tower, processor.feature_extractor):
        assert "dali_hf" not in type(part).__module__, type(part).__module__
    clips = [(0.1 * np.random.default_rng(seed).standard_normal(16000)).astype(np.float32) for seed in (7, 8)]
    clips[1] = clips[1][:4800]
    prompts = [processor.caption_prompt(audio=True, prefix=True), processor.caption_prompt(audio=True)]
    inputs = processor(text=prompts, audio=clips, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        torch.save(model(**inputs).logits, sys.argv[2])
    print(type(model.model.audio_tower).__name__, type(processor.feature_extractor).__name__)
    """
)


@pytest.mark.slow  # a fresh Python without dali_hf
def test_captioner_generates_saves_and_loads_as_remote_code(cav_captioner, tmp_path):
    model, processor = cav_captioner
    inputs = _cav_mae_audio_inputs(processor)
    assert inputs["input_features"].shape == (2, 64, 32)
    generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + 4)

    folder = tmp_path / "dali-cav"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for name in ("configuration_cav_mae.py", "modeling_cav_mae.py", "feature_extraction_cav_mae.py"):
        assert (folder / name).is_file(), name
    with torch.no_grad():
        expected = model(**inputs).logits
        loaded = AutoModel.from_pretrained(folder).eval()
        assert torch.equal(loaded(**_cav_mae_audio_inputs(AutoProcessor.from_pretrained(folder))).logits, expected)

    out = tmp_path / "logits.pt"
    result = run_without_dali_hf(CAV_MAE_REMOTE_SCRIPT, folder, out, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "CavMaeAudioModel CavMaeFeatureExtractor" in result.stdout
    assert torch.equal(torch.load(out), expected)


RESAVE_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from transformers import AutoModel, AutoProcessor, pipeline
    source, copy = sys.argv[1], Path(sys.argv[2])
    model = AutoModel.from_pretrained(source, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(source, trust_remote_code=True)
    assert "dali_hf" not in type(model).__module__, type(model).__module__
    model.save_pretrained(copy)
    processor.save_pretrained(copy)
    print(sorted(p.name for p in copy.glob("*.py")))
    reloaded = AutoModel.from_pretrained(copy, trust_remote_code=True)
    captioner = pipeline(model=str(copy), trust_remote_code=True)
    clip = (0.1 * np.random.default_rng(3).standard_normal(8000)).astype(np.float32)
    print(type(reloaded).__name__, type(captioner).__name__, captioner(clip, sampling_rate=16000, max_new_tokens=2))
    """
)


@pytest.mark.slow  # a fresh Python without dali_hf
def test_remote_code_model_saves_a_complete_folder(ast_captioner, tmp_path):
    """A model loaded through trust_remote_code (no dali_hf) saves a folder whose model and pipeline load the same
    way: the pipeline's code travels with the model's."""
    model, processor = ast_captioner
    folder = tmp_path / "dali"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    result = run_without_dali_hf(RESAVE_SCRIPT, folder, tmp_path / "copy", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    files, loaded = result.stdout.strip().splitlines()[-2:]
    assert files == str(sorted(p.name for p in folder.glob("*.py")))
    assert loaded.startswith("LlavaAudioForConditionalGeneration AudioCaptioningPipeline [{'caption':")


def test_a_save_that_cannot_find_the_pipeline_code_writes_nothing(ast_captioner, tmp_path, monkeypatch):
    import dali_hf.modeling.pipeline_audio_captioning as pipeline_module

    monkeypatch.setattr(pipeline_module, "__file__", str(tmp_path / "gone" / "pipeline_audio_captioning.py"))
    with pytest.raises(FileNotFoundError, match=r"pipeline code .*gone.*is missing \(nothing was written\)"):
        ast_captioner[0].save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_any_to_any_pipeline_takes_audio_without_a_rate(ast_captioner, tmp_path, caplog):
    """transformers' any-to-any pipeline decodes at the feature extractor's rate and passes no sampling_rate: the
    processor warns and takes that rate, as transformers' feature extractors do."""
    from transformers import pipeline

    model, processor = ast_captioner
    folder = tmp_path / "dali"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    prompt, clip = processor.caption_prompt(audio=True, prefix=True), random_clip(4)
    inputs = processor(text=prompt, audio=clip, sampling_rate=16000, return_tensors="pt")
    expected = model.generate(**inputs, **GREEDY)[0, inputs["input_ids"].shape[1]:].tolist()
    silent = processor(text=prompt, audio=0 * clip, sampling_rate=16000, return_tensors="pt")
    assert model.generate(**silent, **GREEDY)[0, inputs["input_ids"].shape[1]:].tolist() != expected  # not void

    chat = pipeline("any-to-any", model=str(folder))
    with caplog.at_level("WARNING"):
        output = chat(text=prompt, audio=clip, generate_kwargs=GREEDY, return_tensors=True)
    assert list(map(int, output[0]["generated_token_ids"]))[-len(expected):] == expected
    assert "No sampling_rate given with the audio: it is taken to be the feature extractor's 16000 Hz" in caplog.text
