"""The words the model files, the trainers and the `dali-hf` command share, each defined once here: the prompt
presets, the decoding presets, the captioning modes and long-audio policies of `pipeline("audio-captioning")`, and
DALI's stages.

Why here: the processor and the pipeline read these words, and they are Hub remote code, which may import only the
files beside them; the trainers, the recipe and the command line sit above this folder and read them from it. This
file imports only `typing`, and `dali_hf.modeling` imports its other modules only when one of their names is first
used, so `dali-hf --help` builds its choices from here without loading torch or transformers. `save_pretrained`
copies this file with the model's code: the processor and the pipeline import it.

Words that only one part of the package uses stay with that part: the metric names in `dali_hf.metrics`
(`ALL_METRICS`, which imports nothing heavy either) and the evaluation-result record in `dali_hf.model_cards`.
"""

from typing import Literal, NamedTuple

__all__ = [
    "DECODING_PRESETS",
    "LONG_AUDIO_POLICIES",
    "MODES",
    "PROMPT_PRESETS",
    "STAGES",
    "PromptPreset",
    "Stage",
    "stage_named",
]

# System texts put before "USER:", per preset, for inference (captioning, pseudo-captions) and for training (prefix
# tuning, distillation). "llava": none, llava-hf's prompt. "reference": those of the DALI authors' code, Vicuna's
# texts of its `llava_v1` (inference) and `vicuna_v1` (training) conversation templates.
PROMPT_PRESETS = {
    "llava": {"inference": None, "training": None},
    "reference": {
        "inference": "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                     "helpful, detailed, and polite answers to the human's questions.",
        "training": "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                    "helpful, detailed, and polite answers to the user's questions.",
    },
}
# the names of PROMPT_PRESETS as a type, for the configs' fields (a type checker needs the words written out; the
# tests check that they are the keys above)
PromptPreset = Literal["llava", "reference"]

# How the captioner picks tokens: "greedy" (reproducible, the default) or "paper" (the reference code's sampling).
# The pipeline adds one beam and 64 new tokens (`PRESETS` there); `dali-hf pseudo-caption` its own --max-new-tokens.
DECODING_PRESETS = {
    "greedy": {"do_sample": False},
    "paper": {"do_sample": True, "temperature": 0.2},
}

# What the captioner is given: the sound, the sound and an image (a video's frame), or an image alone.
MODES = ("audio", "audiovisual", "image")
# Audio longer than the audio encoder's window: "chunks", every window captioned, with its timestamp;
# "first_window", one caption of the first window (how the paper's benchmarks are scored: clips longer than the
# encoder's input are cut to it).
LONG_AUDIO_POLICIES = ("chunks", "first_window")


class Stage(NamedTuple):
    """One of DALI's stages: its step ("1b"), its name ("align") and what it does."""

    step: str
    name: str
    summary: str

    @property
    def folder(self) -> str:
        """The recipe's folder of this stage, e.g. "1b-align"."""
        return f"{self.step}-{self.name}"

    @property
    def title(self) -> str:
        """How docs, cards and tables name it, e.g. "1b align"."""
        return f"{self.step} {self.name}"


# The stages' names are the `dali-hf` subcommands, the recipe's config sections, the folders the recipe writes
# (`1a-prefix-tune`), the stage recorded in a saved config and shown on its model card, and the names of the docs.
STAGES = (
    Stage("1a", "prefix-tune", "learn the prefix on (image, sound caption) pairs"),
    Stage("1b", "align", "align the audio encoder's tokens to the image tokens"),
    Stage("2a", "pseudo-caption", "caption (audio, image) pairs from image + audio + prefix"),
    Stage("2b", "distill", "fine-tune the audio projector on the pseudo-captions"),
)


def stage_named(name: str) -> Stage:
    """The stage called `name` ("align"), or an error listing the names."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ValueError(f"unknown stage {name!r}: the stages are {', '.join(s.name for s in STAGES)}")
