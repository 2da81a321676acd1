"""Tiny LlavaAudio parts built from configs: for tests, benchmarks and the demo on a CPU, nothing downloaded.

The code paths are the full-size ones; only the sizes are small.
"""

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    WhisperConfig,
    WhisperFeatureExtractor,
)

__all__ = [
    "TINY_WORDS",
    "tiny_tokenizer",
    "tiny_llava",
    "tiny_llava_processor",
    "tiny_audio_encoder",
]

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
TINY_WORDS = (
    "USER ASSISTANT : . , ? ! a an the is are and of in on with sound sounds can be heard this scene describe "
    "what dog barks cat meows bird sings car engine rain falls water flows bell rings people talk music plays "
    "loud quiet soft noise image shows there it"
).split()


def tiny_tokenizer(words=TINY_WORDS, room: int = 2) -> tuple[PreTrainedTokenizerFast, int]:
    """A word-level tokenizer over `words` and the vocab size for a model using it, with `room` spare rows
    (so the `<audio>`/`<prefix>` placeholders fit without growing the embeddings, as in llava-hf's checkpoints)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + list(dict.fromkeys(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
    )
    return tokenizer, len(vocab) + room


def tiny_llava(vocab_size: int, image_token_id: int, image_size: int = 32, seed: int = 0, vision_hidden: int = 32,
               text_hidden: int = 48, vision_layers: int = 3, text_layers: int = 2):
    """A random LLaVA-1.5-shaped model: CLIP-style vision tower (patch 8, so 16 image tokens at 32 px), Llama
    decoder; pad/bos/eos are the ids of `tiny_tokenizer` (3, 1, 2)."""
    import torch

    vision = CLIPVisionConfig(
        hidden_size=vision_hidden, intermediate_size=2 * vision_hidden, num_hidden_layers=vision_layers,
        num_attention_heads=4, image_size=image_size, patch_size=8, projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        hidden_size=text_hidden, intermediate_size=2 * text_hidden, num_hidden_layers=text_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=512,
        pad_token_id=3, bos_token_id=1, eos_token_id=2,
    )
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=image_token_id,
        image_seq_length=(image_size // 8) ** 2,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = 3
    model.generation_config.eos_token_id = 2
    return model


def tiny_llava_processor(tokenizer, image_size: int = 32) -> LlavaProcessor:
    """LLaVA's processor over `tokenizer` with a CLIP image processor at `image_size`."""
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def tiny_audio_encoder(kind: str = "ast"):
    """(audio config, feature extractor) of a tiny audio encoder: "ast" (10 tokens) or "whisper" (50 tokens)."""
    if kind == "ast":
        config = ASTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            patch_size=16, frequency_stride=16, time_stride=16, max_length=64, num_mel_bins=32,
        )
        return config, ASTFeatureExtractor(num_mel_bins=32, max_length=64)
    if kind == "whisper":
        config = WhisperConfig(
            d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64, decoder_layers=1,
            decoder_attention_heads=4, decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50,
            max_target_positions=16, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            decoder_start_token_id=1,
        )
        return config, WhisperFeatureExtractor(feature_size=16, chunk_length=1, return_attention_mask=True)
    raise ValueError(f"unknown tiny audio encoder {kind!r}: use 'ast' or 'whisper'")


def tiny_captioner(kind: str = "ast", seed: int = 1):
    """(LlavaAudio captioner, its processor, the plain LLaVA whose modules it reuses), tiny, from configs."""
    import torch

    from . import LlavaAudioForConditionalGeneration, LlavaAudioProcessor

    tokenizer, vocab_size = tiny_tokenizer()
    llava = tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"))
    audio_config, feature_extractor = tiny_audio_encoder(kind)
    processor = LlavaAudioProcessor.from_llava(tiny_llava_processor(tokenizer), feature_extractor,
                                               audio_config=audio_config)
    torch.manual_seed(seed)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor).eval()
    return model, processor, llava
