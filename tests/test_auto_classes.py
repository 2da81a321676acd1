"""modeling/auto_classes.py, the one place that says how the classes are found: what a saved folder's config.json
names for Pythons without dali_hf (the keys folders have always had), the pipeline entry as transformers' own
`Pipeline.save_pretrained` writes it, and the registered task taking the place of the folder's pipeline."""

import json

import pytest
from transformers import AutoConfig, pipeline
from transformers.pipelines import PIPELINE_REGISTRY

from dali_hf.modeling import auto_classes
from dali_hf.modeling.pipeline_audio_captioning import AudioCaptioningPipeline
from dali_hf.testing import saved_captioner

CAPTIONER = "modeling_llava_audio.LlavaAudioForConditionalGeneration"
# config.json of every folder saved so far: loading them (with or without dali_hf) relies on these keys
SAVED_AUTO_MAP = {"AutoConfig": "configuration_llava_audio.LlavaAudioConfig", "AutoModel": CAPTIONER,
                  "AutoModelForImageTextToText": CAPTIONER, "AutoModelForMultimodalLM": CAPTIONER}
SAVED_PIPELINES = {"audio-captioning": {"impl": "pipeline_audio_captioning.AudioCaptioningPipeline",
                                        "pt": ["AutoModelForImageTextToText"], "type": "multimodal"}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, llava_parts):
    return saved_captioner(llava_parts, "whisper", tmp_path_factory.mktemp("captioner"))


def test_a_saved_folder_names_its_classes_and_pipeline_as_before(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == SAVED_AUTO_MAP
    assert config["custom_pipelines"] == SAVED_PIPELINES
    processor = json.loads((folder / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_llava_audio.LlavaAudioProcessor"}
    for entry in [*SAVED_AUTO_MAP.values(), SAVED_PIPELINES["audio-captioning"]["impl"]]:
        assert (folder / (entry.split(".")[0] + ".py")).is_file(), entry


def test_the_pipeline_entry_is_the_one_transformers_writes_for_the_registered_task(folder, monkeypatch, tmp_path):
    """`Pipeline.save_pretrained` of the registered pipeline writes `custom_pipelines` from transformers' registry
    and copies the pipeline's code; the captioner's own save gives the same entry and the same files."""
    captioner = pipeline("audio-captioning", model=str(folder))
    written = {}

    def save_model(save_directory, **kwargs):  # what the pipeline set, before the model's own save
        written.update(json.loads(json.dumps(captioner.model.config.custom_pipelines)))

    monkeypatch.setattr(captioner.model, "save_pretrained", save_model)
    captioner.save_pretrained(tmp_path / "pipeline")
    assert written == json.loads((folder / "config.json").read_text())["custom_pipelines"]
    for path in (tmp_path / "pipeline").glob("*.py"):
        assert path.read_bytes() == (folder / path.name).read_bytes(), path.name


def test_the_registered_task_replaces_the_folders_pipeline(folder, monkeypatch):
    """Where this package's pipeline is registered for the task, the loaded config leaves the folder's entry out
    (else `pipeline()` asks for trust_remote_code); where the task is someone else's, it stays."""
    assert PIPELINE_REGISTRY.supported_tasks["audio-captioning"]["impl"] is AudioCaptioningPipeline
    assert not hasattr(AutoConfig.from_pretrained(folder), "custom_pipelines")
    captioner = pipeline("audio-captioning", model=str(folder))
    assert type(captioner) is AudioCaptioningPipeline

    other = {"impl": type("OtherPipeline", (AudioCaptioningPipeline,), {"__module__": "elsewhere"}), "pt": ()}
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, "audio-captioning", other)
    assert AutoConfig.from_pretrained(folder).custom_pipelines == SAVED_PIPELINES
    assert auto_classes.pipelines_to_keep(SAVED_PIPELINES | {"other-task": {"impl": "x.Y"}}) == \
        SAVED_PIPELINES | {"other-task": {"impl": "x.Y"}}
    monkeypatch.undo()
    assert auto_classes.pipelines_to_keep(SAVED_PIPELINES | {"other-task": {"impl": "x.Y"}}) == \
        {"other-task": {"impl": "x.Y"}}
