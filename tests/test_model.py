"""LlavaAudioForConditionalGeneration: image path equals LLaVA exactly, audio paths, placeholders, from_llava."""

import pytest
import torch
from transformers import ASTForAudioClassification, WhisperForConditionalGeneration

from dali_hf import LlavaAudioForConditionalGeneration
from dali_hf.testing import random_clip, random_image, tiny_audio_encoder

GREEDY = dict(max_new_tokens=6, do_sample=False, min_new_tokens=6)


def test_image_only_equals_plain_llava(llava_parts, ast_captioner):
    llava, llava_processor = llava_parts
    model, processor = ast_captioner
    prompts = ["USER: <image>\ndescribe this image ASSISTANT:", "USER: <image>\nwhat is in it ? ASSISTANT:"]
    images = [random_image(0), random_image(1, size=(20, 50))]

    # single prompt and a left-padded batch of two prompts of different lengths
    for batch_prompts, batch_images in ((prompts[:1], images[:1]), (prompts, images)):
        ours = processor(text=batch_prompts, images=batch_images, return_tensors="pt")
        theirs = llava_processor(text=batch_prompts, images=batch_images, padding=True, padding_side="left",
                                 return_tensors="pt")
        assert torch.equal(ours.input_ids, theirs.input_ids)
        with torch.no_grad():
            diff = (model(**ours).logits - llava(**theirs).logits).abs().max().item()
        assert diff == 0.0
        # the captioner never generates its two added placeholder ids (spare embedding rows LLaVA has no token for)
        never = [processor.audio_token_id, processor.prefix_token_id]
        assert model.generation_config.suppress_tokens == never
        assert torch.equal(model.generate(**ours, **GREEDY), llava.generate(**theirs, **GREEDY, suppress_tokens=never))
    assert (ours.attention_mask == 0).any(), "the batch should be padded"


def test_from_llava_keeps_every_llava_weight(llava_parts, ast_captioner):
    llava, _ = llava_parts
    model, processor = ast_captioner
    ours = model.state_dict()
    for name, tensor in llava.state_dict().items():
        assert torch.equal(ours[name], tensor), name
    # the audio projector starts as a copy of the image projector, in its own parameters
    for a, b in zip(model.model.audio_multi_modal_projector.parameters(),
                    model.model.multi_modal_projector.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    # <audio> and <prefix> fit in the spare embedding rows: no growth
    assert model.get_input_embeddings().weight.shape == llava.get_input_embeddings().weight.shape
    assert max(processor.audio_token_id, processor.prefix_token_id) < llava.config.text_config.vocab_size
    assert model.model.prefix_embeddings.shape == (16, llava.config.text_config.hidden_size)
    assert model.model.prefix_embeddings.std().item() < 1e-3


@pytest.mark.parametrize("kind", ["ast", "whisper"])
def test_from_llava_keeps_the_encoder_of_a_given_audio_model(llava_parts, ast_captioner, kind):
    """An audio model with a head (AST classifier) or an encoder-decoder (Whisper) gives the tower that its config
    gives (same class, same weight names), with the given model's own encoder module and weights."""
    llava, _ = llava_parts
    _, processor = ast_captioner
    config, _ = tiny_audio_encoder(kind)
    torch.manual_seed(0)
    given = ASTForAudioClassification(config) if kind == "ast" else WhisperForConditionalGeneration(config)
    encoder = given.audio_spectrogram_transformer if kind == "ast" else given.model.encoder
    weights = {name: tensor.clone() for name, tensor in encoder.state_dict().items()}
    ids = dict(audio_token_id=processor.audio_token_id, prefix_token_id=processor.prefix_token_id)
    from_model = LlavaAudioForConditionalGeneration.from_llava(llava, given, **ids).model.audio_tower
    from_config = LlavaAudioForConditionalGeneration.from_llava(llava, config, **ids).model.audio_tower
    assert from_model is encoder
    assert type(from_config) is type(from_model) and list(from_config.state_dict()) == list(weights)
    assert all(torch.equal(from_model.state_dict()[name], tensor) for name, tensor in weights.items())


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_from_llava_attn_implementation_reaches_an_audio_tower_built_from_a_config(llava_parts, ast_captioner,
                                                                                  implementation):
    llava, _ = llava_parts
    _, processor = ast_captioner
    config, _ = tiny_audio_encoder("cav_mae")
    model = LlavaAudioForConditionalGeneration.from_llava(llava, config, processor=processor,
                                                         attn_implementation=implementation)
    assert model.model.audio_tower.config._attn_implementation == implementation


def test_token_spaces(llava_parts, captioner):
    llava, _ = llava_parts
    model, processor = captioner
    inputs = processor(text=processor.caption_prompt(image=True, audio=True), images=[random_image(2)],
                       audio=[random_clip(2)], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        image_tokens = model.get_image_tokens(inputs.pixel_values)
        audio_tokens = model.get_audio_tokens(inputs.input_features, inputs.get("input_features_mask"))
        reference = llava.model.vision_tower(inputs.pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
    width = llava.config.vision_config.hidden_size
    assert image_tokens.shape == (1, llava.config.image_seq_length, width)
    assert torch.equal(image_tokens, reference)
    assert audio_tokens.shape == (1, model.config.audio_seq_length, width)


@pytest.mark.parametrize("mode", ["audio", "audiovisual"])
def test_batch_with_padding_equals_items_alone(captioner, mode):
    model, processor = captioner
    image = mode == "audiovisual"
    prompts = [
        processor.caption_prompt(audio=True, image=image, prefix=image),
        processor.caption_prompt(audio=True, image=image, prefix=image, prompt="what sound is heard ?"),
        processor.caption_prompt(audio=True, image=image, prefix=image, prompt="describe the sound"),
    ]
    clips = [random_clip(10), random_clip(11, seconds=0.5), random_clip(12, seconds=2.0)]
    images = [random_image(10), random_image(11), random_image(12)] if image else None
    batch = processor(text=prompts, audio=clips, images=images, sampling_rate=16000, return_tensors="pt")
    assert (batch.attention_mask == 0).any()
    batched = model.generate(**batch, **GREEDY)[:, batch.input_ids.shape[1]:]
    for i in range(3):
        alone = processor(text=prompts[i], audio=clips[i], images=images[i] if image else None,
                          sampling_rate=16000, return_tensors="pt")
        single = model.generate(**alone, **GREEDY)[:, alone.input_ids.shape[1]:]
        assert torch.equal(single[0], batched[i]), (i, single, batched[i])


def test_audio_changes_the_logits(captioner):
    model, processor = captioner
    prompt = processor.caption_prompt(audio=True)
    with torch.no_grad():
        logits = [model(**processor(text=prompt, audio=clip, sampling_rate=16000, return_tensors="pt")).logits
                  for clip in (random_clip(20), random_clip(21))]
    assert (logits[0] - logits[1]).abs().max() > 1e-4


def test_prefix_changes_the_logits_only_where_placed(ast_captioner):
    model, processor = ast_captioner
    clip = random_clip(30)
    without = processor(text=processor.caption_prompt(audio=True), audio=clip, sampling_rate=16000,
                        return_tensors="pt")
    with_prefix = processor(text=processor.caption_prompt(audio=True, prefix=True), audio=clip,
                            sampling_rate=16000, return_tensors="pt")
    n = model.config.num_prefix_tokens
    assert with_prefix.input_ids.shape[1] == without.input_ids.shape[1] + n
    assert (with_prefix.input_ids == processor.prefix_token_id).sum() == n
    with torch.no_grad():
        base = model(**with_prefix).logits
        model.model.prefix_embeddings.add_(1.0)
        try:
            moved = model(**with_prefix).logits
        finally:
            model.model.prefix_embeddings.sub_(1.0)
    assert (base - moved).abs().max() > 1e-4


def test_placeholder_count_mismatch_is_a_clear_error(ast_captioner):
    model, processor = ast_captioner
    inputs = processor(text=processor.caption_prompt(audio=True), audio=random_clip(40), sampling_rate=16000,
                       return_tensors="pt")
    ids = inputs.input_ids.clone()
    ids[0, (ids[0] == processor.audio_token_id).nonzero()[0]] = processor.tokenizer.pad_token_id
    with pytest.raises(ValueError, match=r"audio features and audio placeholder tokens do not match: 9 tokens"):
        model(input_ids=ids, input_features=inputs.input_features)
    with pytest.raises(ValueError, match="Image features and image tokens do not match, tokens: 0, features: 768"):
        model(input_ids=inputs.input_ids, input_features=inputs.input_features,
              pixel_values=processor(text="USER: <image>\nx", images=random_image(0),
                                     return_tensors="pt").pixel_values)


def test_processor_errors(ast_captioner):
    _, processor = ast_captioner
    with pytest.raises(ValueError, match="sampling rate of 16000.*and not 8000"):  # a rate that cannot be right
        processor(text=processor.caption_prompt(audio=True), audio=random_clip(0), sampling_rate=8000)
    with pytest.raises(ValueError, match="no audio inputs were passed"):
        processor(text=processor.caption_prompt(audio=True))
    with pytest.raises(ValueError, match="needs `text`"):
        processor(audio=random_clip(0), sampling_rate=16000)


def test_chat_template_matches_llava_for_images(llava_parts, ast_captioner):
    _, processor = ast_captioner
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "describe this image"}]}]
    assert processor.apply_chat_template(conversation, add_generation_prompt=True) == (
        "USER: <image>\ndescribe this image ASSISTANT:"
    )
    assert processor.caption_prompt(image=True, audio=True, prefix=True) == (
        "USER: <image><audio><prefix>\nDescribe the sound that can be heard in this scene. ASSISTANT:"
    )
