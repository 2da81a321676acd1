"""Training labels from the chat template's assistant mask: the answer and its </s> are what `{% generation %}`
marks, the project's collators label exactly the tokens they labelled when prompt and caption were tokenised apart,
and TRL's SFTTrainer fine-tunes on (audio, caption) conversations with the audio reaching the model."""

import pytest
import torch

from dali_hf.testing import random_clip, random_image, tiny_captioner
from dali_hf.trainers import CaptionCollator


@pytest.fixture(scope="module")
def parts(llava_parts):
    return tiny_captioner("ast", llava_parts=llava_parts)[:2]


def _rows(n, seed=0):
    captions = ["a dog barks", "rain falls and a bell rings", "music plays", "a cat meows in the scene"]
    return [{"id": str(i), "audio": {"array": random_clip(seed + i, seconds=0.3 + 0.2 * i), "sampling_rate": 16000},
             "image": random_image(seed + i), "caption": f" {captions[i % len(captions)]} "} for i in range(n)]


def _apart_reference(processor, rows, image, audio, prefix, prompt_preset):
    """The labels built by tokenising prompt and caption apart: the processor's prompt ids (placeholders expanded),
    then the caption's ids and </s>, labelled; right padding, -100 on prompt and padding."""
    tokenizer = processor.tokenizer
    prompt = processor.caption_prompt(image=image, audio=audio, prefix=prefix, prompt_preset=prompt_preset,
                                      training=True)
    ids, labels = [], []
    for row in rows:
        media = {"images": row["image"]} if image else {}
        if audio:
            media |= {"audio": row["audio"]["array"], "sampling_rate": 16000}
        prompt_ids = processor(text=prompt, **media)["input_ids"][0]
        caption_ids = tokenizer(row["caption"].strip(), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(prompt_ids + caption_ids)
        labels.append([-100] * len(prompt_ids) + caption_ids)
    length = max(map(len, ids))
    return (torch.tensor([r + [tokenizer.pad_token_id] * (length - len(r)) for r in ids]),
            torch.tensor([r + [-100] * (length - len(r)) for r in labels]))


@pytest.mark.parametrize("image, audio, prefix, prompt_preset", [
    (False, True, False, "llava"), (True, False, True, "llava"), (False, True, True, "reference"),
    (True, True, True, "reference")])
def test_collator_labels_what_prompt_and_caption_apart_labelled(parts, image, audio, prefix, prompt_preset):
    _, processor = parts
    rows = _rows(3)
    batch = CaptionCollator(processor, image=image, audio=audio, prefix=prefix, prompt_preset=prompt_preset)(rows)
    input_ids, labels = _apart_reference(processor, rows, image, audio, prefix, prompt_preset)
    assert torch.equal(batch["input_ids"], input_ids)
    assert torch.equal(batch["labels"], labels)
    assert torch.equal(batch["attention_mask"], (input_ids != processor.tokenizer.pad_token_id).long())
    if audio:
        reference = processor.feature_extractor([r["audio"]["array"] for r in rows], sampling_rate=16000,
                                                return_tensors="pt")
        assert torch.equal(batch["input_features"], reference["input_values"])
    if image:
        reference = processor.image_processor([r["image"] for r in rows], return_tensors="pt")["pixel_values"]
        assert torch.equal(batch["pixel_values"], reference)


def test_assistant_mask_holds_the_answer_and_its_eos(parts):
    from trl.chat_template_utils import is_chat_template_stop_token_trained

    _, processor = parts
    tokenizer = processor.tokenizer
    messages = processor.caption_messages(image=random_image(0), audio=random_clip(0), prefix=True,
                                          caption="a dog barks")
    out = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert tokenizer.convert_ids_to_tokens([i for i, m in zip(ids, mask, strict=True) if m]) == [
        "a", "dog", "barks", "</s>"]
    assert is_chat_template_stop_token_trained(processor)  # TRL's own check
    # a prompt for generation is unchanged: no <s> in the text, the tokenizer adds it
    assert processor.caption_prompt(audio=True).startswith("USER: <audio>\n")


def _audio_conversations(processor, folder, seeds):
    """TRL rows: (audio file, caption) conversations, and the empty `images` column that sends TRL to its
    multimodal collator (without it, TRL tokenises the text alone and the audio is never seen)."""
    import soundfile

    rows = []
    for i, seed in enumerate(seeds):
        path = folder / f"clip{seed}.wav"
        soundfile.write(path, random_clip(seed), 16000, subtype="FLOAT")
        caption = ["a dog barks", "rain falls and a bell rings"][i % 2]
        rows.append({"images": [], "messages": processor.caption_messages(audio=str(path), caption=caption,
                                                                          training=True)})
    return rows


@pytest.mark.slow  # a Trainer run, with TRL's imports
def test_sft_trainer_fine_tunes_on_audio_captions(llava_parts, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    model, processor, _ = tiny_captioner("ast", seed=3, llava_parts=llava_parts)
    rows = _audio_conversations(processor, tmp_path, seeds=[0, 1, 2, 3])
    args = SFTConfig(output_dir=str(tmp_path / "sft"), assistant_only_loss=True, per_device_train_batch_size=2,
                     max_steps=2, learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
                     gradient_checkpointing=False, dataloader_num_workers=0, logging_steps=1)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=processor)
    assert isinstance(trainer.data_collator, DataCollatorForVisionLanguageModeling)

    batch = trainer.data_collator([dict(row) for row in rows[:2]])
    ours = CaptionCollator(processor, audio=True)(
        [{"audio": m[0]["content"][0]["audio"], "caption": m[1]["content"][0]["text"]}
         for m in (row["messages"] for row in rows[:2])])
    for key in ("input_ids", "attention_mask", "labels", "input_features"):
        assert torch.equal(batch[key], ours[key]), key
    eos = processor.tokenizer.eos_token_id
    assert all(eos in row.tolist() for row in batch["labels"])  # </s> is trained

    other_audio = trainer.data_collator([dict(row) for row in _audio_conversations(processor, tmp_path, [8, 9])])
    assert torch.equal(other_audio["labels"], batch["labels"])
    with torch.no_grad():
        losses = [model(**{k: v for k, v in b.items() if k != "text"}).loss for b in (batch, other_audio)]
    assert not torch.isclose(losses[0], losses[1])  # the audio reaches the model

    before = model.model.audio_multi_modal_projector.linear_1.weight.clone()
    trainer.train()
    assert trainer.state.global_step == 2
    assert not torch.equal(model.model.audio_multi_modal_projector.linear_1.weight, before)


def test_padding_and_truncation_are_the_texts(llava_parts):
    """TRL's collator (and the any-to-any pipeline) pass padding / truncation / max_length for every modality: the
    text gets them, the fixed-length audio features stay as the feature extractor makes them."""
    _, processor, _ = tiny_captioner("whisper", llava_parts=llava_parts)
    prompt, clip = processor.caption_prompt(audio=True), random_clip(2)
    plain = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt")
    passed = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt", padding=True,
                       padding_side="right", truncation=True, max_length=1024)
    for key in plain:
        assert torch.equal(passed[key], plain[key]), key
    truncated = processor(text=[prompt], audio=[clip], sampling_rate=16000, return_tensors="pt", truncation=True,
                          max_length=plain["input_ids"].shape[1] + 5, padding="max_length")
    assert truncated["input_ids"].shape[1] == plain["input_ids"].shape[1] + 5
    assert torch.equal(truncated["input_features"], plain["input_features"])
