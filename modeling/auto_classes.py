"""How the Auto classes and `pipeline()` find the LlavaAudio classes: registered in a Python where dali_hf is
installed, or named in a saved folder for `trust_remote_code` where it is not. Everything about it is here.

With dali_hf installed, `register()` (run by `import dali_hf`, and by the `dali-hf` command once a command that
loads a model has parsed its arguments, so that `--help` answers without importing torch):
  - registers the config, the captioner (for each of `CAPTIONER_AUTO_CLASSES`), the processor, and the CAV-MAE
    encoder with transformers' Auto classes (`AutoConfig.register`, `AutoModel.register`, ...), and the
    "audio-captioning" task with transformers' pipeline registry: `AutoModel.from_pretrained(folder)` and
    `pipeline("audio-captioning", model=folder)` then need no trust_remote_code. A folder's own code is not used
    where the package is registered (transformers prefers registered classes to a folder's `auto_map`);
  - marks the config, the processor and the CAV-MAE classes for their Auto class (`register_for_auto_class`), so
    that transformers' `save_pretrained` writes the class into the folder's `auto_map` and copies its module, with
    every module it imports relatively (`custom_object_save`). Not the captioner: transformers takes a model so
    marked for code loaded from the Hub, and its `generate` then reads the forward's signature at every decoding
    step (a check for hub code written for older versions), a cost plain LLaVA does not pay. The captioner's
    `save_pretrained` writes its `auto_map` and copies its code itself (`prepare_remote_code`, `save_code`).
    transformers marks the classes it loads through trust_remote_code, so a model loaded without dali_hf saves a
    folder that loads the same way.

A saved folder is then its own code, for Pythons without dali_hf. The captioner's `save_pretrained` calls
`prepare_remote_code` before it writes anything and `save_code` after: config.json's `auto_map` names the captioner
for every class of `CAPTIONER_AUTO_CLASSES` (transformers would write one Auto class per class),
`custom_pipelines` names the captioning pipeline (the entry `Pipeline.save_pretrained` writes; transformers writes
it only when a pipeline object is saved), and the model's module and the pipeline's, with their relative imports,
are copied into the folder (`custom_object_save`, the function transformers' own saving calls). As the config
imports this module, and its functions import the other files here relatively, a saved folder holds every module
of modeling/ but `__init__.py` (transformers copies relative imports, those inside functions too).

Loading a folder in a Python where the task is registered with this very pipeline (dali_hf's registration), the
config leaves the folder's `custom_pipelines` entry for that task out (`pipelines_to_keep`): `pipeline()` would
otherwise ask for trust_remote_code to load code it already has. Folders saved before keep loading: their
config.json has the same keys.

The callers are one line each: `dali_hf/__init__.py` and the command line (`register`), the config's
`__post_init__` (`pipelines_to_keep`), the captioner's `save_pretrained` (`prepare_remote_code`,
`save_code`). This module imports only the standard library at module level (the config imports it); the
classes are imported by the functions that need them.
"""

import sys

__all__ = ["CAPTIONER_AUTO_CLASSES", "CAPTIONING_TASK", "register"]

# The Auto classes that give the captioner itself (AutoModel too: `AutoModel.from_pretrained("org/dali-...")` must
# caption); AutoModelForMultimodalLM is recent, so registration skips it where transformers lacks it
CAPTIONER_AUTO_CLASSES = ("AutoModel", "AutoModelForImageTextToText", "AutoModelForMultimodalLM")
CAPTIONING_TASK = "audio-captioning"
# how `pipeline()` loads the model for the task (its `pt` entry) and what kind of inputs the task takes
_PIPELINE_AUTO_CLASS = "AutoModelForImageTextToText"
_PIPELINE_TYPE = "multimodal"
_PIPELINE_MODULE = "pipeline_audio_captioning"
_PIPELINE_CLASS = "AudioCaptioningPipeline"


def register() -> None:
    """Register the LlavaAudio and CAV-MAE classes with transformers' Auto classes and the "audio-captioning" task
    with its pipeline registry, and mark the classes but the captioner for remote-code saving. Idempotent."""
    import transformers
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel, AutoProcessor
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_cav_mae import CavMaeAudioConfig
    from .configuration_llava_audio import LlavaAudioConfig
    from .feature_extraction_cav_mae import CavMaeFeatureExtractor
    from .modeling_cav_mae import CavMaeAudioModel
    from .modeling_llava_audio import LlavaAudioForConditionalGeneration
    from .pipeline_audio_captioning import AudioCaptioningPipeline
    from .processing_llava_audio import LlavaAudioProcessor

    AutoConfig.register(LlavaAudioConfig.model_type, LlavaAudioConfig, exist_ok=True)
    for name in CAPTIONER_AUTO_CLASSES:
        if hasattr(transformers, name):
            getattr(transformers, name).register(LlavaAudioConfig, LlavaAudioForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(LlavaAudioConfig, LlavaAudioProcessor, exist_ok=True)
    LlavaAudioConfig.register_for_auto_class()
    LlavaAudioProcessor.register_for_auto_class()

    # the CAV-MAE audio encoder, on its own and inside LlavaAudio checkpoints
    AutoConfig.register(CavMaeAudioConfig.model_type, CavMaeAudioConfig, exist_ok=True)
    AutoModel.register(CavMaeAudioConfig, CavMaeAudioModel, exist_ok=True)
    AutoFeatureExtractor.register(CavMaeAudioConfig, CavMaeFeatureExtractor, exist_ok=True)
    CavMaeAudioConfig.register_for_auto_class()
    CavMaeAudioModel.register_for_auto_class()
    CavMaeFeatureExtractor.register_for_auto_class()

    if CAPTIONING_TASK not in PIPELINE_REGISTRY.supported_tasks:  # a pipeline registered for it first stays
        PIPELINE_REGISTRY.register_pipeline(CAPTIONING_TASK, pipeline_class=AudioCaptioningPipeline,
                                            pt_model=getattr(transformers, _PIPELINE_AUTO_CLASS), type=_PIPELINE_TYPE)


def pipelines_to_keep(custom_pipelines: dict | None) -> dict:
    """The entries of a folder's `custom_pipelines` that `pipeline()` needs: all of them, less the tasks registered
    in this Python with this copy's own pipeline class (then the registered one serves, without
    trust_remote_code). Looks at transformers' registry only if something imported it."""
    pipelines = sys.modules.get("transformers.pipelines")
    registered = pipelines.PIPELINE_REGISTRY.supported_tasks if pipelines is not None else {}
    ours = f"{__package__}.{_PIPELINE_MODULE}"
    return {task: entry for task, entry in (custom_pipelines or {}).items()
            if getattr(registered.get(task, {}).get("impl"), "__module__", None) != ours}


def prepare_remote_code(model) -> None:
    """Before the captioner `model` saves: its config names it for every Auto class of `CAPTIONER_AUTO_CLASSES` and
    the captioning pipeline in `custom_pipelines`. Checks first that the pipeline's code is there to copy, so that a
    save that cannot complete writes nothing."""
    _pipeline_files()
    entry = f"{type(model).__module__.rpartition('.')[2]}.{type(model).__name__}"
    model.config.auto_map = (getattr(model.config, "auto_map", None) or {}) | dict.fromkeys(
        CAPTIONER_AUTO_CLASSES, entry)
    model.config.custom_pipelines = {CAPTIONING_TASK: {"impl": f"{_PIPELINE_MODULE}.{_PIPELINE_CLASS}",
                                                       "pt": [_PIPELINE_AUTO_CLASS], "type": _PIPELINE_TYPE}}


def save_code(model, save_directory) -> None:
    """Copy the captioner `model`'s module and the captioning pipeline's, with the modules they import relatively,
    into `save_directory`, as transformers' `save_pretrained` does for a model marked for its Auto class and
    `Pipeline.save_pretrained` for a registered pipeline."""
    from transformers.dynamic_module_utils import custom_object_save

    custom_object_save(model, save_directory)
    custom_object_save(_pipeline_class(), save_directory)


def _pipeline_class():
    # imported here: the model's import does not import the pipeline; the relative import also makes transformers
    # copy the pipeline beside this module into its remote-code cache, so a remote-code model can save it
    from .pipeline_audio_captioning import AudioCaptioningPipeline

    return AudioCaptioningPipeline


def _pipeline_files() -> list[str]:
    """The pipeline's files that `save_code` copies, or an error naming the one that is missing."""
    from transformers.dynamic_module_utils import get_relative_import_files

    path = sys.modules[_pipeline_class().__module__].__file__
    try:
        return [path, *get_relative_import_files(path)]
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"Cannot save the captioner: its pipeline code {error.filename} is missing (nothing was written). "
            "Reinstall dali-hf, or load the model again from a folder or Hub repo that has "
            f"{_PIPELINE_MODULE}.py."
        ) from error
