"""Fixtures shared by the test modules: tiny models built from configs by `dali_hf.testing`, nothing downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
from timm.models.vision_transformer import Block
from torch import nn

from dali_hf.testing import tiny_captioner, tiny_llava_parts

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def llava_parts():
    """(plain LLaVA model, its processor) at tiny size, shared: build a captioner that trains with
    `tiny_captioner()`, which makes its own."""
    return tiny_llava_parts()


@pytest.fixture(scope="session", params=["ast", "whisper"])
def captioner(request, llava_parts):
    """(LlavaAudio model, processor) around the tiny LLaVA, for each tested audio encoder."""
    return tiny_captioner(request.param, llava_parts=llava_parts)[:2]


@pytest.fixture(scope="session")
def ast_captioner(llava_parts):
    return tiny_captioner("ast", llava_parts=llava_parts)[:2]


@pytest.fixture(scope="session")
def make_trainer():
    """A function (data, output_dir, **AlignmentConfig overrides) -> a DistributionAlignmentTrainer of a new
    tiny AST captioner, with short CPU settings; `data`: a dataset, or a function of the processor that builds one."""
    from dali_hf.trainers import AlignmentConfig, DistributionAlignmentTrainer

    def make(data, output_dir, **overrides):
        model, processor, _ = tiny_captioner("ast")
        data = data(processor) if callable(data) else data
        settings = dict(output_dir=str(output_dir), per_device_train_batch_size=4, learning_rate=1e-3,
                        num_train_epochs=3, logging_steps=1, save_strategy="no", report_to=[], seed=0,
                        use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, lambda_values=[0.05],
                        lambda_final=0.05, uniform_epochs=1)
        settings.update(overrides)
        return DistributionAlignmentTrainer(model=model, args=AlignmentConfig(**settings), train_dataset=data,
                                            processing_class=processor)

    return make


# ---- an independent reference of the CAV-MAE audio path: timm blocks under the authors' names ------------------


class SharedBlock(Block):
    """A shared CAV-MAE block run for audio: timm's block with the audio LayerNorms `norm1_a` / `norm2_a` (its
    own `norm1` / `norm2`, for the joint stream, stay unused as in the release)."""

    def __init__(self, dim, *args, **kwargs):
        super().__init__(dim, *args, **kwargs)
        self.norm1_a, self.norm2_a = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1_a(x))
        return x + self.mlp(self.norm2_a(x))


class ReferenceCavMae(nn.Module):
    """The released CAV-MAE's audio path and its `proj` to the vision width (32, of `tiny_llava`), with random
    weights drawn from `seed`; its state dict has the release's names."""

    def __init__(self, config, seed: int, vision_width: int = 32):
        super().__init__()
        dim, patch = config.hidden_size, config.patch_size
        block = dict(
            num_heads=config.num_attention_heads,
            mlp_ratio=config.intermediate_size / dim,
            qkv_bias=True,
            norm_layer=nn.LayerNorm,
        )  # nn.LayerNorm: eps 1e-5, as CAV-MAE (timm's default is 1e-6)
        self.patch_embed_a = nn.Module()
        self.patch_embed_a.proj = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        tokens = (config.num_mel_bins // patch) * (config.target_length // patch)
        self.pos_embed_a = nn.Parameter(torch.zeros(1, tokens, dim))
        self.modality_a = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks_a = nn.ModuleList([Block(dim, **block) for _ in range(config.num_hidden_layers)])
        self.blocks_u = nn.ModuleList([SharedBlock(dim, **block) for _ in range(config.num_shared_layers)])
        self.norm_a = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, vision_width)
        for blk in [*self.blocks_a, *self.blocks_u]:
            blk.attn.fused_attn = False  # timm's explicit softmax(q k^T * scale) v, not SDPA
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # random everything, LayerNorms and the position table included
            for name, param in self.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(1 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.02 * noise)
        self.eval()

    def forward(self, fbank):
        """CAV-MAE's audio forward: [batch, frames, bins] -> [batch, tokens, width]."""
        a = self.patch_embed_a.proj(fbank.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
        a = a + self.pos_embed_a + self.modality_a
        for blk in self.blocks_a:
            a = blk(a)
        for blk in self.blocks_u:
            a = blk(a)
        return self.norm_a(a)


@pytest.fixture(scope="session")
def cav_mae_reference():
    """`ReferenceCavMae`: call it with (CavMaeAudioConfig, seed) for a random reference of that size."""
    return ReferenceCavMae
