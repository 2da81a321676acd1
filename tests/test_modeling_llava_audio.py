"""LlavaAudio tested the way transformers tests its models: `LlavaAudioModelTester` builds a tiny config, the models and
their inputs; `TestLlavaAudioModel` runs the model contract on them as LLaVA follows it (both model classes from the
config, inputs_embeds, generation without a cache, the 5.x feature getters, deprecation aliases, LLaVA's error wording,
both weight formats, static cache and compile, any LLaVA configuration, chat templates) and the attention interface of
every audio tower. Each case compares with plain LLaVA, the `input_ids` path, another attention implementation or a hand
computation, never with constants.

transformers' `ModelTesterMixin` ships with its repository's tests, not with the wheel, so the tester follows its layout
(`get_config`, `prepare_config_and_inputs`, `prepare_config_and_inputs_for_common`, `all_model_classes`) and the test
class is a pytest class, so that fixtures (`tmp_path`, `monkeypatch`) and parametrisation stay available."""

import copy
import inspect
import os
import subprocess
import sys
import warnings

import pytest
import torch
from transformers import (
    ASTConfig,
    CLIPVisionConfig,
    CompileConfig,
    DynamicCache,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaModel,
    LogitsProcessor,
    LogitsProcessorList,
    MistralConfig,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.integrations.neftune import activate_neftune
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast, LlavaModelOutputWithPast
from transformers.testing_utils import CaptureLogger

from dali_hf import LlavaAudioConfig, LlavaAudioForConditionalGeneration, LlavaAudioModel
from dali_hf.modeling import modeling_llava_audio
from dali_hf.testing import random_clip, random_image, tiny_captioner

GREEDY = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
AUDIO_ENCODERS = ["ast", "whisper", "cav_mae"]  # every tower `dali_hf.testing.tiny_audio_encoder` builds
# float32 eager and SDPA differ by rounding only (at most 7.5e-8 measured on these audio tokens)
ATTENTION_ATOL = 1e-5


class LlavaAudioModelTester:
    """What the tests of one tiny LlavaAudio need, built as transformers' `*ModelTester` classes build it: the config
    (`get_config`) and inputs for it (`prepare_config_and_inputs`); here also the captioner and the plain LLaVA whose
    modules it shares (`from_llava`, through `dali_hf.testing.tiny_captioner`), the reference of the contract cases.

    The inputs are `batch_size` prompts with an image, a clip and the prefix each, for a captioner of LLaVA's CLIP-style
    vision tower and Llama decoder and the `audio_encoder` tower ("ast", "whisper" or "cav_mae")."""

    def __init__(self, audio_encoder: str = "ast", batch_size: int = 2, seed: int = 1):
        self.audio_encoder = audio_encoder
        self.batch_size = batch_size
        self.model, self.processor, self.llava = tiny_captioner(audio_encoder, seed=seed)

    def get_config(self) -> LlavaAudioConfig:
        return copy.deepcopy(self.model.config)

    def prepare_config_and_inputs(self):
        """(config, the processor's `BatchFeature`): image + audio + prefix prompts, the default prompt and "what ?" in
        turn, with the images and clips of seeds 1, 2, ..."""
        caption_prompt = self.processor.caption_prompt
        prompts = [caption_prompt(image=True, audio=True, prefix=True, prompt="what ?" if i % 2 else None)
                   for i in range(self.batch_size)]
        seeds = range(1, self.batch_size + 1)
        inputs = self.processor(text=prompts, images=[random_image(seed) for seed in seeds],
                                audio=[random_clip(seed) for seed in seeds], sampling_rate=16000, return_tensors="pt")
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self):
        config, inputs = self.prepare_config_and_inputs()
        return config, dict(inputs)


def media(inputs):
    return {k: inputs[k] for k in ("pixel_values", "input_features") if k in inputs}


FSDP2_MODEL_UNIT = """
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from dali_hf.testing import random_clip, random_image, tiny_captioner

dist.init_process_group("gloo", rank=0, world_size=1)
model, processor, _ = tiny_captioner("cav_mae")
inputs = processor(text=[processor.caption_prompt(image=True, audio=True, prefix=True)], images=[random_image(1)],
                   audio=[random_clip(1)], sampling_rate=16000, return_tensors="pt")
with torch.no_grad():
    expected = model(**inputs).logits
for layer in model.model.language_model.layers:
    fully_shard(layer)
fully_shard(model.model)
fully_shard(model)
with torch.no_grad():
    logits = model(**inputs).logits
dist.destroy_process_group()
assert torch.equal(logits, expected), (logits - expected).abs().max()
print("same logits")
"""


class Boost(LogitsProcessor):
    """Adds a large logit to one token at every step (after suppression: a suppressed token stays at -inf)."""

    def __init__(self, token_id):
        self.token_id = token_id

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.token_id] += 1e4
        return scores


VOCAB, IMAGE, AUDIO, PREFIX = 64, 60, 61, 62


def _text_config(kind):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256, pad_token_id=0,
                  bos_token_id=1, eos_token_id=2)
    return {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind](**common)


def _vision_config(kind):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=16,
                  patch_size=4)
    return CLIPVisionConfig(projection_dim=32, **common) if kind == "clip" else SiglipVisionConfig(**common)


def _blocks_and_heads(audio_config) -> tuple[int, int]:
    """(blocks, attention heads) of the audio tower of `audio_config`, as each config names them."""
    if audio_config.model_type == "whisper":
        return audio_config.encoder_layers, audio_config.encoder_attention_heads
    if audio_config.model_type == "cav_mae_audio":  # audio-only then shared blocks
        return audio_config.num_layers, audio_config.num_attention_heads
    return audio_config.num_hidden_layers, audio_config.num_attention_heads


@pytest.fixture(scope="module")
def tester():
    """Built for this module only (a case here switches its models to eager attention)."""
    return LlavaAudioModelTester()


@pytest.fixture(scope="module")
def full_inputs(tester):
    return tester.prepare_config_and_inputs()[1]


class TestLlavaAudioModel:
    all_model_classes = (LlavaAudioModel, LlavaAudioForConditionalGeneration)

    # ---- 0. every model class from the config alone ----------------------------------------------------------------

    def test_model_classes_build_from_the_config(self, tester):
        config, inputs = tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        base, captioner = (model_class(config).eval() for model_class in self.all_model_classes)
        with torch.no_grad():
            hidden = base(**inputs).last_hidden_state
            logits = captioner(**inputs).logits
            from_its_base = captioner.lm_head(captioner.model(**inputs).last_hidden_state)
        batch, length = inputs["input_ids"].shape
        assert hidden.shape == (batch, length, config.text_config.hidden_size)
        assert logits.shape == (batch, length, config.text_config.vocab_size)
        assert type(captioner.model) is LlavaAudioModel and torch.equal(logits, from_its_base)

    # ---- the audio tower through transformers' attention interface ----------------------------------------------

    @pytest.mark.parametrize("audio_encoder", AUDIO_ENCODERS)
    def test_audio_attention_implementation_set_on_the_composite_config(self, audio_encoder, tmp_path):
        """`attn_implementation` given for the audio sub-config reaches the tower (the language model keeps SDPA):
        eager gives SDPA's audio tokens and returns one attention map per block, whose rows sum to one; switched back
        to SDPA, the tokens are SDPA's bit for bit."""
        tester = LlavaAudioModelTester(audio_encoder)
        model, (_, inputs) = tester.model, tester.prepare_config_and_inputs()
        features, mask = inputs["input_features"], inputs.get("input_features_mask")
        model.save_pretrained(tmp_path)
        eager = LlavaAudioForConditionalGeneration.from_pretrained(
            tmp_path, attn_implementation={"audio_config": "eager"}).eval()
        tower = eager.model.audio_tower
        assert model.model.audio_tower.config._attn_implementation == "sdpa"
        assert eager.config.audio_config._attn_implementation == tower.config._attn_implementation == "eager"
        assert eager.config.text_config._attn_implementation == "sdpa"
        with torch.no_grad():
            sdpa_tokens = model.get_audio_tokens(features, mask)
            eager_tokens = eager.get_audio_tokens(features, mask)
            outputs = eager.get_audio_features(features, mask, output_attentions=True, output_hidden_states=True)
            eager.set_attn_implementation("sdpa")
            assert tower.config._attn_implementation == "sdpa"
            assert torch.equal(eager.get_audio_tokens(features, mask), sdpa_tokens)
        torch.testing.assert_close(eager_tokens, sdpa_tokens, rtol=0, atol=ATTENTION_ATOL)

        blocks, heads = _blocks_and_heads(tower.config)
        tokens = model.config.audio_seq_length
        assert len(outputs.attentions) == blocks and len(outputs.hidden_states) == blocks + 1
        for attention in outputs.attentions:
            assert attention.shape == (tester.batch_size, heads, tokens, tokens)
            torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:-1]))

    @pytest.mark.parametrize("audio_encoder", AUDIO_ENCODERS)
    def test_audio_tower_is_called_one_way_and_no_signature_is_read(self, audio_encoder, monkeypatch):
        """Every tower is called as transformers' audio encoders are, (features, mask, **kwargs), whatever it calls its
        mask; nothing reads a signature while the captioner runs."""
        tester = LlavaAudioModelTester(audio_encoder)
        model, (_, inputs) = tester.model, tester.prepare_config_and_inputs()
        calls, signature = [], inspect.signature

        def recorded_signature(*args, **kwargs):
            calls.append(args)
            return signature(*args, **kwargs)

        monkeypatch.setattr(inspect, "signature", recorded_signature)
        seen = []
        hook = model.model.audio_tower.register_forward_pre_hook(
            lambda module, args, kwargs: seen.append((args, kwargs)), with_kwargs=True)
        try:
            with torch.no_grad():
                model(**inputs, output_attentions=True)
                model.get_audio_tokens(inputs["input_features"], inputs.get("input_features_mask"))
        finally:
            hook.remove()
        assert calls == []
        assert len(seen) == 2
        for args, _ in seen:
            assert len(args) == 2 and torch.equal(args[0], inputs["input_features"])
            assert args[1] is inputs.get("input_features_mask")
        assert seen[0][1].get("output_attentions") is True and seen[1][1] == {"return_dict": True}

    # ---- LLaVA's forward, inherited ---------------------------------------------------------------------------------

    def test_the_forwards_that_run_are_llavas(self, tester, full_inputs, monkeypatch):
        """The captioner's and its model's forwards hand over to LLaVA's own (inherited, not copied): wrapping LLaVA's
        classes wraps what the captioner runs."""
        model = tester.model
        calls = []
        for cls in (LlavaForConditionalGeneration, LlavaModel):
            def spy(self, *args, _forward=cls.forward, _name=cls.__name__, **kwargs):
                calls.append(_name)
                return _forward(self, *args, **kwargs)
            monkeypatch.setattr(cls, "forward", spy)
        with torch.no_grad():
            model(**full_inputs)
            model.model(**full_inputs)
        assert calls == ["LlavaForConditionalGeneration", "LlavaModel", "LlavaModel"]

    def test_outputs_are_llavas_with_the_audio_added(self, tester, full_inputs):
        """Both forwards return the object LLaVA's forward built, with the audio encoder's output set in
        `audio_outputs` (the field transformers' multimodal outputs have for it): image-only outputs have LLaVA's
        class and keys, the tuple form ends with the audio, LLaVA's own attributes work."""
        model, processor, llava = tester.model, tester.processor, tester.llava
        image_only = processor(text=[processor.caption_prompt(image=True)], images=[random_image(1)],
                               return_tensors="pt")
        with torch.no_grad():
            ours, theirs = model(**image_only), llava(**image_only)
            full, base = model(**full_inputs), model.model(**full_inputs)
            as_tuple = model(**full_inputs, return_dict=False)
            audio = model.get_audio_features(full_inputs["input_features"])
        assert type(ours) is type(theirs) is type(full) is LlavaCausalLMOutputWithPast
        assert type(base) is LlavaModelOutputWithPast
        assert list(ours.keys()) == list(theirs.keys()) and "audio_outputs" not in ours.keys()
        for out in (full, base):
            assert list(out.keys())[-2:] == ["image_outputs", "audio_outputs"]
            assert torch.equal(out.audio_outputs.pooler_output, audio.pooler_output)
        assert len(as_tuple) == len(full.keys()) and torch.equal(as_tuple[0], full.logits)
        assert torch.equal(as_tuple[-1][1], audio.pooler_output)  # audio_outputs.to_tuple(): (tokens, features)
        assert full.image_hidden_states is full.image_outputs.pooler_output  # LLaVA's deprecated name

    def test_generate_reads_the_forwards_signature_as_often_as_for_llava(self, tester, monkeypatch):
        """With dali_hf installed the captioner is a registered class, not code loaded from the Hub: `generate` does not
        read its forward's signature at every decoding step, as it does for hub code (a check for code that expects
        `cache_position`), so a step costs what LLaVA's does. Counted against plain LLaVA generating from the same
        image-only prompt."""
        model, processor, llava = tester.model, tester.processor, tester.llava
        image_only = processor(text=[processor.caption_prompt(image=True)], images=[random_image(1)],
                               return_tensors="pt")
        signature, reads = inspect.signature, {}

        def recorded_signature(obj, *args, **kwargs):
            if getattr(obj, "__name__", None) == "forward":
                owner = type(obj.__self__).__name__
                reads[owner] = reads.get(owner, 0) + 1
            return signature(obj, *args, **kwargs)

        monkeypatch.setattr(inspect, "signature", recorded_signature)
        model.generate(**image_only, **GREEDY)
        llava.generate(**image_only, **GREEDY)
        assert reads.get("LlavaAudioForConditionalGeneration", 0) == reads.get("LlavaForConditionalGeneration", 0)
        assert not model.is_remote_code()

    def test_the_captioner_runs_the_parts_of_its_model_inside_the_models_call(self, tester, full_inputs):
        """As LLaVA's captioner does, the captioner reaches the parts of `model.model` only through `model.model(...)`:
        wrappers that hold a module's parameters between its calls (an FSDP unit made of `model.model`, which FSDP2
        and a size-based wrap policy make) then have them at hand. Each part's forward records whether it runs inside
        that call; the encoder outputs still come back."""
        model = tester.model
        inside, outside = [False], []

        def enter(module, args):
            inside[0] = True

        def leave(module, args, output):
            inside[0] = False

        hooks = [model.model.register_forward_pre_hook(enter), model.model.register_forward_hook(leave)]
        for name, part in model.model.named_children():
            hooks.append(part.register_forward_pre_hook(
                lambda module, args, name=name: None if inside[0] else outside.append(name)))
        try:
            with torch.no_grad():
                outputs = model(**full_inputs)
        finally:
            for hook in hooks:
                hook.remove()
        assert outside == []
        assert outputs.audio_outputs is not None and outputs.image_outputs is not None

    @pytest.mark.slow  # a fresh Python with a process group
    def test_fsdp2_unit_made_of_the_model_runs_the_captioner(self, tmp_path):
        """The case above with FSDP2 itself: `fully_shard` on the decoder layers, on `model.model` and on the captioner
        (one gloo process), gives the unsharded captioner's logits."""
        script = tmp_path / "fsdp2_model_unit.py"
        script.write_text(FSDP2_MODEL_UNIT)
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                                env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29571"})
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip().endswith("same logits")

    def test_images_are_placed_by_their_ids_under_noisy_embeddings_as_in_llava(self, tester, full_inputs):
        """NEFTune (`TrainingArguments(neftune_noise_alpha=...)`) adds fresh noise to every output of the embedding
        layer in training. Given `input_ids`, LLaVA finds `<image>` in them; the captioner must too, not look the
        placeholder's embedding up among the noisy prompt embeddings (no row matches, and the hook fails on the
        one-token lookup). Same seed, same noise: image-only logits equal plain LLaVA's."""
        model, processor, llava = tester.model, tester.processor, tester.llava
        image_only = processor(text=[processor.caption_prompt(image=True)], images=[random_image(1)],
                               return_tensors="pt")
        with torch.no_grad():
            clean = llava(**image_only).logits
        hook = activate_neftune(model, neftune_noise_alpha=5.0)  # the embedding layer is LLaVA's too (shared)
        model.train()
        try:
            with torch.no_grad():
                torch.manual_seed(0)
                expected = llava(**image_only).logits
                torch.manual_seed(0)
                ours = model(**image_only).logits
                every_input = model(**full_inputs, labels=full_inputs.input_ids)
        finally:
            hook.remove()
            del model.get_input_embeddings().neftune_noise_alpha
            model.eval()
        assert not torch.equal(expected, clean), "the noise should have been on"
        assert torch.equal(ours, expected)
        assert torch.isfinite(every_input.loss)

    # ---- 1. inputs_embeds --------------------------------------------------------------------------------------------

    def test_inputs_embeds_place_every_feature_like_input_ids(self, tester, full_inputs):
        model = tester.model
        embeds = model.get_input_embeddings()(full_inputs.input_ids)
        with torch.no_grad():
            from_ids = model(**full_inputs).logits
            from_embeds = model(inputs_embeds=embeds, attention_mask=full_inputs.attention_mask,
                                **media(full_inputs)).logits
        assert torch.equal(from_ids, from_embeds)

        prompt_length = full_inputs.input_ids.shape[1]
        generated = model.generate(**full_inputs, **GREEDY)[:, prompt_length:]
        from_embeds = model.generate(inputs_embeds=embeds, attention_mask=full_inputs.attention_mask,
                                     **media(full_inputs), **GREEDY)
        assert torch.equal(generated, from_embeds)


    # ---- 2. generation without a cache, beams, sampling; placeholders never generated, stray ids ignored -------------

    def test_generation_without_cache_beam_and_sampling(self, tester, full_inputs):
        model, processor = tester.model, tester.processor
        prompt_length = full_inputs.input_ids.shape[1]
        cached = model.generate(**full_inputs, **GREEDY)
        assert torch.equal(model.generate(**full_inputs, **GREEDY, use_cache=False), cached)
        for options in (dict(num_beams=2, num_return_sequences=2), dict(do_sample=True, top_k=5)):
            torch.manual_seed(0)
            out = model.generate(**full_inputs, max_new_tokens=4, use_cache=False, return_dict_in_generate=True,
                                 output_scores=True, **options)
            new_tokens = out.sequences[:, prompt_length:]
            assert new_tokens.shape[1] == 4
            assert not torch.isin(new_tokens, torch.tensor([processor.audio_token_id, processor.prefix_token_id])).any()


    def test_placeholders_are_never_generated_and_generated_ones_stay_tokens(self, tester, full_inputs):
        model, processor = tester.model, tester.processor
        prompt_length = full_inputs.input_ids.shape[1]
        for token_id in (processor.prefix_token_id, processor.audio_token_id):
            boost = LogitsProcessorList([Boost(token_id)])
            kept = model.generate(**full_inputs, **GREEDY, use_cache=False, logits_processor=boost)[:, prompt_length:]
            assert not (kept == token_id).any()
        # with the suppression lifted, generated <prefix> ids are re-read as plain tokens without a cache: as cached.
        # (A generated <audio> would not match the audio features, as a generated <image> in LLaVA: suppressed.)
        boost = LogitsProcessorList([Boost(processor.prefix_token_id)])
        free = model.generate(**full_inputs, **GREEDY, use_cache=False, logits_processor=boost, suppress_tokens=[])
        assert (free[:, prompt_length:] == processor.prefix_token_id).all()
        assert torch.equal(free, model.generate(**full_inputs, **GREEDY, logits_processor=boost, suppress_tokens=[]))


    def test_stray_placeholder_ids_without_features_are_plain_tokens_as_in_llava(self, tester):
        model, processor, llava = tester.model, tester.processor, tester.llava
        words = processor.tokenizer("USER : a dog barks ASSISTANT :", return_tensors="pt").input_ids
        stray = torch.tensor([[processor.audio_token_id, processor.prefix_token_id, processor.image_token_id]])
        short_run = torch.full((1, 3), processor.prefix_token_id)  # a run of the wrong length: plain tokens, a warning
        modeling_llava_audio.logger.warning_once.cache_clear()  # the warning may have been given once already
        for ids in (torch.cat([words[:, :3], stray, words[:, 3:]], dim=1), torch.cat([words, short_run], dim=1)):
            with torch.no_grad(), CaptureLogger(modeling_llava_audio.logger) as log:
                assert torch.equal(model(input_ids=ids).logits, llava(input_ids=ids).logits)
        assert "is not 16 long (num_prefix_tokens)" in log.out

    def test_a_prefill_chunk_that_cuts_the_prefix_is_named(self, tester):
        """`generate(prefill_chunk_size=...)` runs the prompt in pieces; a piece boundary inside the prefix leaves two
        short runs, read as plain tokens (the captions change). The warning names that cause and its fix."""
        model, processor = tester.model, tester.processor
        inputs = processor(text=[processor.caption_prompt(image=True, prefix=True)], images=[random_image(1)],
                           return_tensors="pt")
        first_prefix = int((inputs.input_ids[0] == processor.prefix_token_id).nonzero()[0])
        whole = model.generate(**inputs, **GREEDY)
        modeling_llava_audio.logger.warning_once.cache_clear()
        with CaptureLogger(modeling_llava_audio.logger) as log:
            cut = model.generate(**inputs, **GREEDY, prefill_chunk_size=first_prefix + 5)
        assert not torch.equal(cut, whole)
        assert "prefill_chunk_size" in log.out and "is not 16 long" in log.out
        with CaptureLogger(modeling_llava_audio.logger) as log:
            assert torch.equal(model.generate(**inputs, **GREEDY, prefill_chunk_size=first_prefix), whole)
        assert log.out == ""


    # ---- 3. feature getters return what LlavaModel.get_image_features returns --------------------------------------

    def test_get_image_features_is_llavas(self, tester, full_inputs):
        model, llava = tester.model, tester.llava
        model.set_attn_implementation("eager")  # shared with `llava`: attentions can be returned
        pixels = full_inputs.pixel_values
        with torch.no_grad():
            for kwargs in ({}, {"output_hidden_states": True, "output_attentions": True}):
                ours, theirs = model.get_image_features(pixels, **kwargs), llava.get_image_features(pixels, **kwargs)
                assert len(ours.pooler_output) == len(theirs.pooler_output) == 2
                assert all(map(torch.equal, ours.pooler_output, theirs.pooler_output))
                assert torch.equal(ours.last_hidden_state, theirs.last_hidden_state)
                for field in ("hidden_states", "attentions"):
                    if kwargs:
                        assert len(getattr(ours, field)) == len(getattr(theirs, field)) > 0
                        assert all(map(torch.equal, getattr(ours, field), getattr(theirs, field)))
            as_tuple = model.get_image_features(pixels, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], theirs.last_hidden_state)


    def test_get_audio_features_returns_encoder_output_with_projected_features(self, tester, full_inputs):
        model = tester.model
        parts_ = model.model
        features = full_inputs.input_features
        with torch.no_grad():
            encoder = parts_.audio_tower(features, output_hidden_states=True, output_attentions=True)
            by_hand = parts_.audio_multi_modal_projector(parts_.audio_to_vision(encoder.last_hidden_state))
            plain = model.get_audio_features(features)
            full = model.get_audio_features(features, output_hidden_states=True, output_attentions=True)
            logits = model(**full_inputs)
        assert torch.equal(plain.pooler_output, by_hand)
        assert torch.equal(plain.last_hidden_state, encoder.last_hidden_state)
        assert plain.hidden_states is None and plain.attentions is None
        n_layers = model.config.audio_config.num_hidden_layers
        assert len(full.hidden_states) == n_layers + 1 and len(full.attentions) == n_layers
        assert all(map(torch.equal, full.hidden_states, encoder.hidden_states))
        # forward uses the getters' outputs
        assert torch.equal(logits.audio_outputs.pooler_output, by_hand)
        assert all(map(torch.equal, logits.image_outputs.pooler_output,
                       model.get_image_features(full_inputs.pixel_values).pooler_output))


    # ---- 4. aliases --------------------------------------------------------------------------------------------------

    def test_past_key_values_is_a_deprecated_alias_of_cache(self, tester, full_inputs):
        model = tester.model
        text_config = model.config.get_text_config(decoder=True)
        with torch.no_grad():
            new = model(**full_inputs, cache=DynamicCache(config=text_config))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                old = model(**full_inputs, past_key_values=DynamicCache(config=text_config))
                model.model(**full_inputs, past_key_values=DynamicCache(config=text_config))
        assert sum("`past_key_values` is deprecated" in str(w.message) for w in caught) == 2
        assert torch.equal(new.logits, old.logits) and old.cache.get_seq_length() == full_inputs.input_ids.shape[1]


    def test_image_token_index_is_an_alias_of_image_token_id(self):
        config = LlavaAudioConfig(image_token_index=7)
        assert config.image_token_id == config.image_token_index == 7
        config.image_token_index = 9
        assert config.image_token_id == 9 and LlavaAudioConfig.from_dict(config.to_dict()).image_token_index == 9


    # ---- 5. LLaVA's error wording on the image path ------------------------------------------------------------------

    def test_image_mismatch_error_is_llavas(self, tester, full_inputs):
        model, processor, llava = tester.model, tester.processor, tester.llava
        prompt = processor.tokenizer(["USER: <image> <image> ASSISTANT:"], return_tensors="pt").input_ids
        for ids, pixels in ((full_inputs.input_ids[:1], full_inputs.pixel_values),
                            (prompt, full_inputs.pixel_values[:1])):
            with pytest.raises(ValueError) as theirs:
                llava(input_ids=ids, pixel_values=pixels)
            with pytest.raises(ValueError) as ours:
                model(input_ids=ids, pixel_values=pixels)
            assert str(ours.value) == str(theirs.value)
            assert str(ours.value).startswith("Image features and image tokens do not match")


    # ---- 6. both weight formats --------------------------------------------------------------------------------------

    def test_both_weight_formats_load_and_the_default_resumes_in_trainer(self, tester, full_inputs, tmp_path):
        from safetensors.torch import load_file

        model = tester.model
        with torch.no_grad():
            reference = model(**full_inputs).logits
        for original_format in (False, True):
            folder = tmp_path / f"original_{original_format}"
            model.save_pretrained(folder, save_original_format=original_format)
            names = set(load_file(folder / "model.safetensors"))
            assert (names <= set(model.state_dict())) is not original_format  # original names: AST's own
            loaded = LlavaAudioForConditionalGeneration.from_pretrained(
                folder, attn_implementation=model.config._attn_implementation).eval()
            with torch.no_grad():
                assert torch.equal(loaded(**full_inputs).logits, reference)
        # Trainer's resume: a non-strict `load_state_dict` of the raw file, which must find every tensor
        model.save_pretrained(tmp_path / "default")
        result = loaded.load_state_dict(load_file(tmp_path / "default" / "model.safetensors"), strict=False)
        assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}


    # ---- 7. static cache and torch.compile ---------------------------------------------------------------------------

    @pytest.mark.slow  # torch.compile
    def test_static_cache_and_compiled_forward_equal_dynamic_greedy(self, tester, full_inputs):
        model = tester.model
        assert LlavaAudioForConditionalGeneration._can_compile_fullgraph
        dynamic = model.generate(**full_inputs, **GREEDY)
        assert torch.equal(model.generate(**full_inputs, **GREEDY, cache_implementation="static"), dynamic)

        compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
        compile_config._compile_all_devices = True  # the CPU too
        torch._dynamo.reset()
        compiled = model.generate(**full_inputs, **GREEDY, cache_implementation="static", compile_config=compile_config)
        assert hasattr(model, "_compiled_call"), "decoding steps should have run compiled"
        assert torch.equal(compiled, dynamic)


    # ---- any LLaVA ---------------------------------------------------------------------------------------------------

    @pytest.mark.parametrize(("vision", "strategy", "layer", "text"), [
        ("siglip", "full", -1, "qwen2"),  # the shape of llava-interleave-qwen / llava-onevision towers
        ("clip", "default", [-3, -1], "mistral"),
        ("clip", "full", [-2], "llama"),
    ])
    def test_any_llava_image_only_identity_and_audio(self, vision, strategy, layer, text):
        tokens = 16 + (1 if vision == "clip" and strategy == "full" else 0)
        config = LlavaConfig(vision_config=_vision_config(vision), text_config=_text_config(text),
                             image_token_index=IMAGE, vision_feature_select_strategy=strategy,
                             vision_feature_layer=layer, image_seq_length=tokens)
        torch.manual_seed(0)
        llava = LlavaForConditionalGeneration(config).eval()
        audio_config = ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                                 patch_size=16, frequency_stride=16, time_stride=16, max_length=32, num_mel_bins=16)
        model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, num_prefix_tokens=4,
                                                              audio_token_id=AUDIO, prefix_token_id=PREFIX).eval()
        pixels = torch.randn(1, 3, 16, 16)
        ids = torch.tensor([[1, 5, *[IMAGE] * tokens, 7, 8, 9]])
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits,
                               llava(input_ids=ids, pixel_values=pixels).logits)
        never = [AUDIO, PREFIX]
        assert torch.equal(model.generate(input_ids=ids, pixel_values=pixels, **GREEDY),
                           llava.generate(input_ids=ids, pixel_values=pixels, **GREEDY, suppress_tokens=never))

        audio_ids = torch.tensor([[1, 5, *[IMAGE] * tokens, *[AUDIO] * model.config.audio_seq_length,
                                   *[PREFIX] * 4, 7]])
        audio = torch.randn(1, 32, 16)
        with torch.no_grad():
            out = model(input_ids=audio_ids, pixel_values=pixels, input_features=audio)
            embeds = model.get_input_embeddings()(audio_ids)
            assert torch.equal(model(inputs_embeds=embeds, pixel_values=pixels, input_features=audio).logits,
                               out.logits)
        assert out.audio_outputs.pooler_output.shape == (1, model.config.audio_seq_length, 32)


    # ---- chat templates the audio-LLM way ----------------------------------------------------------------------------

    def test_apply_chat_template_loads_media_and_returns_model_inputs(self, tester, tmp_path):
        import soundfile

        from dali_hf import LlavaAudioProcessor

        model, processor = tester.model, tester.processor
        clip, image = random_clip(5), random_image(5)
        soundfile.write(tmp_path / "clip.wav", clip, 16000, subtype="FLOAT")  # lossless: the same samples come back
        image.save(tmp_path / "image.png")
        expected = processor(text=processor.caption_prompt(image=True, audio=True, prefix=True), images=image,
                             audio=clip, sampling_rate=16000, return_tensors="pt")
        processor.save_pretrained(tmp_path / "processor")
        assert (tmp_path / "processor" / "chat_template.jinja").read_text() == processor.chat_template
        reloaded = LlavaAudioProcessor.from_pretrained(tmp_path / "processor")

        for audio_item, image_item in (({"path": str(tmp_path / "clip.wav")}, {"path": str(tmp_path / "image.png")}),
                                       ({"audio": clip}, {"image": image})):
            messages = [{"role": "user", "content": [
                {"type": "image", **image_item}, {"type": "audio", **audio_item}, {"type": "prefix"},
                {"type": "text", "text": processor.default_prompt}]}]
            for proc in (processor, reloaded):
                inputs = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                  return_tensors="pt")
                assert set(inputs) == set(expected)
                for key in expected:
                    assert torch.equal(inputs[key], expected[key]), key
        assert model.generate(**inputs, max_new_tokens=2).shape[1] == expected.input_ids.shape[1] + 2


    @pytest.mark.parametrize("task", ["any-to-any", "image-text-to-text"])
    def test_transformers_chat_pipelines_run_audio_content(self, tester, task):
        from transformers import pipeline

        model, processor = tester.model, tester.processor
        messages = [{"role": "user", "content": [{"type": "audio", "audio": random_clip(6)}, {"type": "prefix"},
                                                 {"type": "text", "text": processor.default_prompt}]}]
        direct = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        expected = model.generate(**direct, **GREEDY)[0].tolist()
        without_audio = model.generate(**{k: v for k, v in direct.items() if k != "input_features"},
                                       **GREEDY)[0].tolist()
        assert expected != without_audio, "the audio should change this caption (else this test is void)"
        chat = pipeline(task, model=model, processor=processor)
        generated = chat(text=messages, generate_kwargs=GREEDY, return_tensors=True)[0]["generated_token_ids"]
        assert list(map(int, generated)) == expected
