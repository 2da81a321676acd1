"""Stage 2 of DALI: audiovisual distillation (docs/method.md, section 5).

1. `generate_pseudo_captions`: caption (audio, frame) pairs from image + audio tokens + prefix, in batches, into a
   `datasets` dataset; resumable (a restart continues after the last written batch, no duplicates), and clips that
   cannot be decoded are listed in a report, never replaced.
2. `AudioVisualDistillationTrainer`: fine-tunes only the audio projector with the language-model loss on the
   pseudo-captions, from audio alone and without the prefix. The image path stays LLaVA's.
"""

import json
import os
from dataclasses import dataclass, field

import datasets
import torch
from transformers import TrainingArguments

from ..modeling.media import AudioInputError, load_image, prepare_audio
from .collators import CaptionCollator
from .stages import CaptionStageTrainer

__all__ = [
    "DistillationConfig",
    "AudioVisualDistillationTrainer",
    "generate_pseudo_captions",
    "attach_captions",
    "PSEUDO_CAPTIONS_FILE",
    "SKIPPED_FILE",
]

PSEUDO_CAPTIONS_FILE = "pseudo_captions.jsonl"
SKIPPED_FILE = "skipped.jsonl"
SETTINGS_FILE = "generation_settings.json"


@dataclass
class DistillationConfig(TrainingArguments):
    """Defaults of the reference code: lr 2e-4, cosine, warmup 3%, 1 epoch (paper: batch 40)."""

    prompt: str | None = field(default=None, metadata={"help": "instruction; default: the processor's"})
    prompt_preset: str | None = field(default=None, metadata={"help": "system texts: 'llava' (none) or 'reference' "
                                                                      "(the authors'); default: the processor's"})
    use_prefix: bool = field(default=False, metadata={"help": "keep the learned prefix in the audio prompt"})
    learning_rate: float = field(default=2e-4)
    lr_scheduler_type: str = field(default="cosine")
    warmup_ratio: float = field(default=0.03)
    num_train_epochs: float = field(default=1.0)
    remove_unused_columns: bool = field(default=False)
    lora_r: int = field(default=0, metadata={"help": "rank of LoRA adapters on the language model; 0 = off (the "
                                                     "paper trains the audio projector only)"})
    lora_alpha: int = field(default=16)
    lora_dropout: float = field(default=0.05)
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


class AudioVisualDistillationTrainer(CaptionStageTrainer):
    """Trains `audio_multi_modal_projector` on (audio, caption) rows: "USER: <audio>\\n{prompt} ASSISTANT:".

    With `lora_r > 0` (an extension, off by default) LoRA adapters on the language model train too, through peft;
    the final `save_model` merges them, so the output is a plain LlavaAudio folder. LoRA changes the language model,
    so image captioning is then no longer exactly LLaVA's.
    """

    trained_part = "audio_multi_modal_projector"
    stage_name = "distill"
    card_fields = ("prompt", "prompt_preset", "use_prefix", "lora_r", "lr_scheduler_type", "warmup_ratio")

    def __init__(self, model=None, args=None, **kwargs):
        super().__init__(model=model, args=args, **kwargs)
        if getattr(self.args, "lora_r", 0) > 0:
            from peft import LoraConfig, inject_adapter_in_model

            lora = LoraConfig(r=self.args.lora_r, lora_alpha=self.args.lora_alpha,
                              lora_dropout=self.args.lora_dropout, target_modules=self.args.lora_target_modules)
            inject_adapter_in_model(lora, self.model.model.language_model)
            for name, param in self.model.model.language_model.named_parameters():
                param.requires_grad = "lora_" in name

    def build_collator(self, processor, args):
        return CaptionCollator(processor, audio=True, prefix=getattr(args, "use_prefix", False),
                               prompt=getattr(args, "prompt", None), prompt_preset=getattr(args, "prompt_preset", None))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not _internal_call and getattr(self.args, "lora_r", 0) > 0:
            merge_lora(self.model.model.language_model)  # the final folder: plain weights
        super().save_model(output_dir, _internal_call)


def merge_lora(module) -> None:
    """Fold injected LoRA adapters into their base layers and put the base layers back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attribute, child.get_base_layer())


@torch.no_grad()
def generate_pseudo_captions(model, processor, dataset, output_dir: str, batch_size: int = 8,
                             prompt: str | None = None, prompt_preset: str | None = None,
                             **generate_kwargs) -> datasets.Dataset:
    """Caption every (audio, image) row of `dataset` from image + audio + prefix; returns a dataset (`id`,
    `caption`) saved under `output_dir/dataset`.

    Each finished batch is appended to `output_dir/pseudo_captions.jsonl`, so a restart skips the ids already
    there (a line cut by a kill is dropped and redone). Rows whose audio or image cannot be read go to
    `skipped.jsonl` with the reason. Decoding defaults to greedy (reproducible); pass e.g. `do_sample=True,
    temperature=0.2, max_new_tokens=128` for the reference code's sampling. The settings are written to
    `generation_settings.json`. `prompt_preset` (default: the processor's) chooses the system text, see
    `LlavaAudioProcessor.caption_prompt`.
    """
    os.makedirs(output_dir, exist_ok=True)
    settings = {"max_new_tokens": 128, "do_sample": False} | generate_kwargs
    text = processor.caption_prompt(image=True, audio=True, prefix=True, prompt=prompt, prompt_preset=prompt_preset)
    recorded = {"model": str(model.name_or_path), "prompt": text, **settings}
    settings_path = os.path.join(output_dir, SETTINGS_FILE)
    captions_path = os.path.join(output_dir, PSEUDO_CAPTIONS_FILE)
    if os.path.exists(captions_path) and os.path.exists(settings_path):
        with open(settings_path, encoding="utf-8") as handle:
            previous = json.load(handle)
        if {k: previous.get(k) for k in recorded} != json.loads(json.dumps(recorded, default=str)):
            raise ValueError(f"{output_dir} holds pseudo-captions made by another model or with other settings "
                             f"({previous}); resume with the same ones, or use a new folder")
    _write_json(settings_path, {**recorded, "batch_size": batch_size})
    done = {row["id"] for row in _read_jsonl(captions_path, repair=True)}
    skipped_path = os.path.join(output_dir, SKIPPED_FILE)
    done |= {row["id"] for row in _read_jsonl(skipped_path, repair=True)}

    model.eval()
    rate = processor.feature_extractor.sampling_rate
    pending = [i for i, item_id in enumerate(dataset["id"]) if str(item_id) not in done]
    for start in range(0, len(pending), batch_size):
        rows, skipped = [], []
        for index in pending[start:start + batch_size]:
            example = dataset[index]
            try:
                rows.append((str(example["id"]), prepare_audio(example["audio"], rate),
                             load_image(example["image"])))
            except (AudioInputError, ValueError) as error:
                skipped.append({"id": str(example["id"]), "reason": str(error)})
        if rows:
            ids, clips, images = zip(*rows, strict=True)
            inputs = processor(text=[text] * len(ids), images=list(images), audio=list(clips), sampling_rate=rate,
                               return_tensors="pt").to(model.device)
            generated = model.generate(**inputs, **settings)[:, inputs["input_ids"].shape[1]:]
            captions = processor.batch_decode(generated, skip_special_tokens=True)
            _append_jsonl(captions_path, [{"id": i, "caption": c.strip()} for i, c in zip(ids, captions, strict=True)])
        _append_jsonl(skipped_path, skipped)

    result = datasets.Dataset.from_list(list(_read_jsonl(captions_path)),
                                        features=datasets.Features({"id": datasets.Value("string"),
                                                                    "caption": datasets.Value("string")}))
    result.save_to_disk(os.path.join(output_dir, "dataset"))
    return result


def attach_captions(pairs: datasets.Dataset, captions: datasets.Dataset) -> datasets.Dataset:
    """`pairs` rows that have a caption in `captions` (matched by `id`), with that caption as column `caption`."""
    by_id = dict(zip(captions["id"], captions["caption"], strict=True))
    keep = [i for i, item_id in enumerate(pairs["id"]) if str(item_id) in by_id]
    selected = pairs.select(keep)
    return selected.add_column("caption", [by_id[str(i)] for i in selected["id"]])


def _read_jsonl(path: str, repair: bool = False) -> list[dict]:
    """Rows of a jsonl file; with `repair`, a last line cut by a kill (no newline, or not JSON) is cut off the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as handle:
        data = handle.read()
    rows, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("unterminated line")
            rows.append(json.loads(line))
        except ValueError:  # json.JSONDecodeError is a ValueError
            break
        good += len(line)
    if repair and good < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(good)
    return rows


def _append_jsonl(path: str, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        handle.flush()
        os.fsync(handle.fileno())


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2, default=str)
