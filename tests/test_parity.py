"""Parity with the DALI authors' code: converted scorers, the reference gradient option, the feature augmentation,
the reference prompt preset, the shared projector and the channel policy. Each expected value is computed here
from the reference's described behaviour, independently of the code under test."""

import copy

import numpy as np
import ot
import pytest
import torch
from tokenizers import pre_tokenizers, processors

from dali_hf import CavMaeAudioConfig, CavMaeAudioModel, CavMaeFeatureExtractor, LlavaAudioProcessor
from dali_hf.convert import official_name, split_official_state_dict
from dali_hf.modeling.processing_llava_audio import DEFAULT_PROMPT, PROMPT_PRESETS
from dali_hf.testing import (
    TINY_WORDS,
    random_clip,
    random_image,
    tiny_audio_encoder,
    tiny_captioner,
    tiny_llava_processor,
    tiny_tokenizer,
)
from dali_hf.trainers import AlignmentConfig, CaptionCollator, DistributionAlignmentTrainer
from dali_hf.trainers.collators import FeatureAugmentation
from dali_hf.trainers.objectives import AttentiveMarginals

WIDTH, HEADS = 16, 4

# ---- 1. scorers: the authors' layout and names, converted ---------------------------------------------------


def _authors_backbone(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny audio_backbone in the authors' naming: audio path, `proj`, and scorers whose `image_scorer` gives the
    audio token weights (audio queries against image keys and values)."""
    generator = torch.Generator().manual_seed(seed)
    config = CavMaeAudioConfig(hidden_size=8, num_hidden_layers=1, num_shared_layers=1, num_attention_heads=2,
                               intermediate_size=16, num_mel_bins=16, target_length=32)
    tensors = {official_name(name, config): t for name, t in CavMaeAudioModel(config).state_dict().items()}
    tensors |= {"proj.weight": torch.randn(WIDTH, 8, generator=generator), "proj.bias": torch.zeros(WIDTH)}
    for scorer in ("audio_scorer", "image_scorer"):
        tensors |= {f"{scorer}.in_proj_weight": torch.randn(3 * WIDTH, WIDTH, generator=generator) / 4,
                    f"{scorer}.in_proj_bias": torch.randn(3 * WIDTH, generator=generator) / 4,
                    f"{scorer}.out_proj.weight": torch.randn(WIDTH, WIDTH, generator=generator) / 4,
                    f"{scorer}.out_proj.bias": torch.randn(WIDTH, generator=generator)}
    for name in ("a_q", "a_k", "a_v", "i_q", "i_k", "i_v"):
        tensors |= {f"{name}.weight": torch.randn(WIDTH, WIDTH, generator=generator) / 4,
                    f"{name}.bias": torch.randn(WIDTH, generator=generator) / 4}
    return tensors, config


def _attention_scores(tensors, scorer, queries, keys, values):
    """8-head (here HEADS) attention as the reference's MultiheadAttention computes it, written out: in_proj split in
    q, k, v, scaled dot products per head, out_proj."""
    w_q, w_k, w_v = tensors[f"{scorer}.in_proj_weight"].chunk(3)
    b_q, b_k, b_v = tensors[f"{scorer}.in_proj_bias"].chunk(3)

    def heads(x):
        return x.reshape(*x.shape[:2], HEADS, WIDTH // HEADS).transpose(1, 2)

    q, k, v = heads(queries @ w_q.T + b_q), heads(keys @ w_k.T + b_k), heads(values @ w_v.T + b_v)
    attention = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, dim=-1)
    mixed = (attention @ v).transpose(1, 2).reshape(queries.shape)
    return mixed @ tensors[f"{scorer}.out_proj.weight"].T + tensors[f"{scorer}.out_proj.bias"]


def _reference_weights(tensors, audio, image):
    """(alpha, beta) by the reference's formulas: softmax(mean over features / 20), mixed 50/50 with uniform;
    alpha from `image_scorer(a_q(A), i_k(I), i_v(I))`, beta from `audio_scorer(i_q(I), a_k(A), a_v(A))`."""
    def linear(name, x):
        return x @ tensors[f"{name}.weight"].T + tensors[f"{name}.bias"]

    def weights(scores):
        return (torch.softmax(scores.mean(-1) / 20, dim=-1) + 1 / scores.shape[1]) / 2

    alpha = weights(_attention_scores(tensors, "image_scorer", linear("a_q", audio), linear("i_k", image),
                                      linear("i_v", image)))
    beta = weights(_attention_scores(tensors, "audio_scorer", linear("i_q", image), linear("a_k", audio),
                                     linear("a_v", audio)))
    return alpha, beta


def test_converted_scorers_give_the_reference_weights():
    tensors, config = _authors_backbone()
    scorers = AttentiveMarginals(WIDTH, HEADS)
    scorers.load_state_dict(split_official_state_dict(tensors, config).scorers)
    generator = torch.Generator().manual_seed(1)
    audio, image = 3 * torch.randn(2, 12, WIDTH, generator=generator), 3 * torch.randn(2, 9, WIDTH, generator=generator)
    expected_alpha, expected_beta = _reference_weights(tensors, audio, image)
    with torch.no_grad():
        alpha, beta = scorers(audio, image)
    assert alpha.shape == (2, 12) and beta.shape == (2, 9)
    assert torch.allclose(alpha, expected_alpha, atol=1e-6) and torch.allclose(beta, expected_beta, atol=1e-6)
    assert (alpha - 1 / 12).abs().max() > 1e-3  # not uniform: the comparison can tell the scorers apart


@pytest.mark.parametrize("change,message", [
    (lambda t: t.pop("image_scorer.out_proj.bias"), "missing ['image_scorer.out_proj.bias']"),
    (lambda t: t.update({"a_q.weight": torch.zeros(WIDTH, WIDTH + 1)}), "a_q.weight [16, 17] (expected [16, 16])"),
    (lambda t: t.update({"audio_scorer.extra": torch.zeros(1)}), "unexpected ['audio_scorer.extra']"),
])
def test_converter_refuses_scorers_of_another_layout(change, message):
    tensors, config = _authors_backbone()
    change(tensors)
    with pytest.raises(ValueError, match="scorers do not have the expected layout") as error:
        split_official_state_dict(tensors, config)
    assert message in str(error.value)


# ---- 2. the reference's encoder gradient --------------------------------------------------------------------


def _alignment_trainer(tmp_path, **overrides):
    model, processor, _ = tiny_captioner("ast")
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=3, report_to=[], use_cpu=True,
                    save_strategy="no", disable_tqdm=True, objective="attentive_ot", uniform_epochs=0,
                    lambda_values=[0.5], scorer_num_heads=4, seed=0) | overrides
    return DistributionAlignmentTrainer(model=model.train(), args=AlignmentConfig(**settings),
                                        processing_class=processor)


def _entropy(p):
    return -(p * p.log()).sum(-1)


def test_reference_gradient_is_the_reference_steps_total(tmp_path):
    trainer = _alignment_trainer(tmp_path, attentive_ot_gradient="reference")
    model, scorers, lam = trainer.model, trainer.scorers, 0.5
    batch = {"input_features": torch.randn(3, 64, 32, generator=torch.Generator().manual_seed(2)),
             "pixel_values": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))}
    trainer.compute_loss(model, batch).backward()
    trained = [p for p in model.model.parameters() if p.requires_grad]  # the audio side (the scorers: below)
    ours = [p.grad.clone() for p in trained]
    ours_scorers = [p.grad.clone() for p in scorers.parameters()]
    model.zero_grad()
    scorers.zero_grad()

    # the reference's step, by hand with POT: both optimisers zero their gradients, then
    # (OT - lambda H).backward(retain_graph=True) [the scorer step], then OT.backward(), into the same gradients
    audio = model(input_features=batch["input_features"]).audio_tokens
    image = model.get_image_tokens(batch["pixel_values"]).detach()
    alpha, beta = scorers(audio, image)
    ot_value = torch.stack([ot.emd2(alpha[i], beta[i], torch.cdist(audio[i], image[i]) ** 2)
                            for i in range(3)]).mean()
    scorer_loss = ot_value - lam * (_entropy(alpha) + _entropy(beta)).mean()
    scorer_loss.backward(retain_graph=True)
    expected_scorers = [p.grad.clone() for p in scorers.parameters()]  # the scorer optimiser steps here
    ot_value.backward()
    for param, got in zip(trained, ours, strict=True):
        assert torch.allclose(got, param.grad, rtol=1e-4, atol=1e-6)
    for expected, got in zip(expected_scorers, ours_scorers, strict=True):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    # and "plan" differs: the test can tell the two apart
    plan = _alignment_trainer(tmp_path)
    plan.model.load_state_dict(model.state_dict())
    plan.scorers.load_state_dict(scorers.state_dict())
    plan.compute_loss(plan.model, batch).backward()
    encoder = model.model.audio_to_vision.weight
    assert not torch.allclose(plan.model.model.audio_to_vision.weight.grad, encoder.grad, rtol=1e-2)


def test_gradient_option_is_checked(tmp_path):
    with pytest.raises(ValueError, match="attentive_ot_gradient must be one of"):
        AlignmentConfig(output_dir=str(tmp_path), attentive_ot_gradient="both")


# ---- 3. augmentation ------------------------------------------------------------------------------------------


def test_augmentation_is_the_references_and_reproducible():
    frames, bins = 40, 6
    time_index = torch.arange(frames, dtype=torch.float32)[None, :, None].expand(5, frames, bins) * 10
    mask = (torch.arange(frames) < 30).int().expand(5, frames)
    augmented, rolled_mask = FeatureAugmentation(seed=7)(time_index, mask)
    again, _ = FeatureAugmentation(seed=7)(time_index, mask)
    other, _ = FeatureAugmentation(seed=8)(time_index, mask)
    assert torch.equal(augmented, again) and not torch.equal(augmented, other)
    for clip in range(5):
        shift = int(augmented[clip, :, 0].argmin())  # frame 0 (value 0) is now at `shift`
        unrolled = augmented[clip].roll(-shift, 0)
        noise = unrolled - time_index[clip]
        assert (noise >= 0).all() and (noise < 0.1).all()  # U(0, 1) * r / 10 with r in [0, 1)
        assert torch.equal(rolled_mask[clip].roll(-shift, 0), mask[clip])
    amplitudes = [(augmented[c].roll(-int(augmented[c, :, 0].argmin()), 0) - time_index[c]).max() for c in range(5)]
    assert max(amplitudes) - min(amplitudes) > 1e-3  # one r per clip
    plain, _ = FeatureAugmentation(noise_scale=0.0, roll=False)(time_index)
    assert torch.equal(plain, time_index)


def test_augmentation_applies_to_training_batches_only(tmp_path):
    assert AlignmentConfig(output_dir=str(tmp_path)).augment is False
    trainer = _alignment_trainer(tmp_path, augment=True, objective="mmd")
    seen = []
    tokens = trainer._tokens
    trainer._tokens = lambda model, inputs, **kwargs: seen.append(inputs["input_features"]) or tokens(model, inputs,
                                                                                                       **kwargs)
    batch = {"input_features": torch.randn(3, 64, 32), "pixel_values": torch.randn(3, 3, 32, 32)}
    with torch.no_grad():
        trainer.compute_loss(trainer.model.eval(), batch)
        trainer.compute_loss(trainer.model.train(), batch)
    assert torch.equal(seen[0], batch["input_features"])
    assert not torch.equal(seen[1], batch["input_features"])


# ---- 4. the reference prompt preset ---------------------------------------------------------------------------


def _offline_tokenizer():
    """A word-level tokenizer built here that knows every word of the reference's system texts."""
    texts = [text for preset in PROMPT_PRESETS.values() for text in preset.values() if text] + [DEFAULT_PROMPT]
    words = [word for text in texts for word, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)]
    tokenizer, vocab_size = tiny_tokenizer([*TINY_WORDS, *words])
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[bos])
    return tokenizer, vocab_size


def _reference_ids(tokenizer, system: str, prompt: str, image_marker: int) -> list[int]:
    """The ids the reference builds (conversation template v1 / llava_v1: system, " ", "USER: <image>\\n{prompt}",
    " ", "ASSISTANT:"), split at <image> and tokenised piece by piece, BOS only at the start, the media block as one
    marker."""
    text = f"{system} USER: <image>\n{prompt} ASSISTANT:"
    before, after = text.split("<image>")
    return (tokenizer(before)["input_ids"] + [image_marker]
            + tokenizer(after, add_special_tokens=False)["input_ids"])


def _collapse_media(ids: list[int], processor, marker: int) -> list[int]:
    media = (processor.image_token_id, processor.audio_token_id, processor.prefix_token_id)
    order = [i for i in ids if i in media]
    block = [kind for index, kind in enumerate(order) if index == 0 or order[index - 1] != kind]
    assert block == [kind for kind in media if kind in order]  # one block, [image][audio][prefix]
    collapsed = []
    for token in ids:
        if token not in media:
            collapsed.append(token)
        elif not collapsed or collapsed[-1] != marker:
            collapsed.append(marker)
    return collapsed


@pytest.fixture(scope="module")
def reference_captioner():
    tokenizer, _ = _offline_tokenizer()
    audio_config, feature_extractor = tiny_audio_encoder("ast")
    processor = LlavaAudioProcessor.from_llava(tiny_llava_processor(tokenizer), feature_extractor,
                                               audio_config=audio_config, prompt_preset="reference")
    return tokenizer, processor


def test_reference_preset_gives_the_reference_template_ids(reference_captioner):
    tokenizer, processor = reference_captioner
    marker = -200  # the reference's IMAGE_TOKEN_INDEX
    inputs = processor(text=processor.caption_prompt(image=True, audio=True, prefix=True), images=random_image(0),
                       audio=random_clip(0), sampling_rate=16000)
    expected = _reference_ids(processor.tokenizer, PROMPT_PRESETS["reference"]["inference"], DEFAULT_PROMPT, marker)
    assert tokenizer.unk_token_id not in expected
    assert expected[0] == tokenizer.bos_token_id and expected.count(tokenizer.bos_token_id) == 1
    assert _collapse_media(inputs["input_ids"][0], processor, marker) == expected
    assert processor.caption_prompt(audio=True).startswith("A chat between a curious human")
    assert processor.caption_prompt(audio=True, prompt_preset="llava").startswith("USER:")

    collator = CaptionCollator(processor, audio=True)  # training: the vicuna_v1 text, "user"
    batch = collator([{"audio": {"array": random_clip(1), "sampling_rate": 16000}, "caption": "a dog barks"}])
    prompt_ids = batch["input_ids"][0][batch["labels"][0] == -100].tolist()
    expected = _reference_ids(processor.tokenizer, PROMPT_PRESETS["reference"]["training"], DEFAULT_PROMPT, marker)
    assert _collapse_media(prompt_ids, processor, marker) == expected


def test_prompt_preset_is_saved_and_checked(reference_captioner, tmp_path):
    _, processor = reference_captioner
    processor.save_pretrained(tmp_path)
    assert LlavaAudioProcessor.from_pretrained(tmp_path).prompt_preset == "reference"
    with pytest.raises(ValueError, match="prompt_preset must be one of"):
        processor.caption_prompt(audio=True, prompt_preset="vicuna")


# ---- 5. shared projector, 6. channel policy -------------------------------------------------------------------


def test_shared_projector_sends_images_through_the_audio_projector(ast_captioner, tmp_path):
    model = copy.deepcopy(ast_captioner[0])
    with torch.no_grad():
        model.model.audio_multi_modal_projector.linear_2.bias.add_(1.0)
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.model.get_image_tokens(pixels)
        own = model.model.get_image_features(pixels).pooler_output[0]
        model.config.shared_projector = True
        shared = model.model.get_image_features(pixels).pooler_output[0]
    assert torch.allclose(own, model.model.multi_modal_projector(tokens)[0])
    assert torch.allclose(shared, model.model.audio_multi_modal_projector(tokens)[0])
    assert not torch.allclose(own, shared)
    model.config.save_pretrained(tmp_path)
    assert type(model.config).from_pretrained(tmp_path).shared_projector is True


def test_channel_policy(tmp_path):
    left, right = random_clip(3), random_clip(4)
    stereo = np.stack([left, right])
    first = CavMaeFeatureExtractor(num_mel_bins=16, target_length=64, channel_policy="first")
    mean = CavMaeFeatureExtractor(num_mel_bins=16, target_length=64)
    assert mean.channel_policy == "mean"

    def features(extractor, clip):
        return extractor(clip, sampling_rate=16000)["input_features"][0]

    assert np.array_equal(features(first, stereo), features(first, left))
    assert np.array_equal(features(first, stereo.T), features(first, left))  # [samples, channels] too
    assert np.allclose(features(mean, stereo), features(mean, (left + right) / 2), atol=1e-5)
    first.save_pretrained(tmp_path)
    assert CavMaeFeatureExtractor.from_pretrained(tmp_path).channel_policy == "first"
    with pytest.raises(ValueError, match="channel_policy must be one of"):
        CavMaeFeatureExtractor(channel_policy="left")
