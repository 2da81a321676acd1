"""LoRA for distillation through peft: the merge peft does is the hand-computed W + lora_alpha / r * B @ A, and the
merged language model has exactly the keys it had before the adapters."""

import torch
from peft.tuners.lora import LoraLayer

from dali_hf.testing import tiny_captioner
from dali_hf.trainers.lora import inject_lora, merge_lora

R, ALPHA = 4, 12  # peft scales the update by lora_alpha / r = 3


def test_peft_merge_is_the_hand_computed_update():
    model, _, _ = tiny_captioner("ast")
    language_model = model.model.language_model
    before = {name: value.clone() for name, value in language_model.state_dict().items()}
    lora_model = inject_lora(language_model, r=R, alpha=ALPHA, dropout=0.0, target_modules=["q_proj", "v_proj"])
    assert {name for name, p in language_model.named_parameters() if p.requires_grad} == {
        name for name in dict(language_model.named_parameters()) if "lora_" in name}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero: give every adapter values, as training would
        for name, param in language_model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    adapted = {}
    for name, layer in language_model.named_modules():
        if isinstance(layer, LoraLayer):
            a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
            adapted[f"{name}.weight"] = (layer.base_layer.weight + (b @ a) * (ALPHA / R)).detach().clone()
    assert len(adapted) == 2 * len(language_model.layers)  # q_proj and v_proj of every layer

    assert merge_lora(lora_model) is language_model
    merged = language_model.state_dict()
    assert not any(isinstance(layer, LoraLayer) for layer in language_model.modules())
    assert not hasattr(language_model, "peft_config")
    assert list(merged) == list(before)  # the saved folder's keys, in the same order
    for name, value in merged.items():
        if name in adapted:
            assert torch.equal(value, adapted[name]), name
            assert not torch.equal(value, before[name])
        else:
            assert torch.equal(value, before[name]), name
