"""LoRA adapters on the language model for the distillation stage (an extension; the paper trains the audio
projector only): injected through peft for training, folded back by peft into plain layers for the saved folder."""

__all__ = ["inject_lora", "merge_lora"]


def inject_lora(module, r: int, alpha: int, dropout: float, target_modules: list[str]):
    """Add LoRA adapters to `target_modules` of `module`, in place; only the adapters train, the rest is frozen.
    Returns peft's `LoraModel` that holds them, for `merge_lora`."""
    from peft import LoraConfig, LoraModel

    # what peft's `inject_adapter_in_model` does, keeping the `LoraModel` it builds (that function returns only the
    # module): `merge_and_unload` is a method of it. Unlike `get_peft_model`, the module stays where it is, so the
    # captioner's parameter names only gain the adapters' `lora_` entries.
    lora_model = LoraModel(module, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                              target_modules=target_modules), adapter_name="default")
    for name, param in module.named_parameters():
        param.requires_grad = "lora_" in name
    return lora_model


def merge_lora(lora_model):
    """Fold the adapters of `lora_model` (from `inject_lora`) into their base layers (W + lora_alpha / r * B @ A)
    and put the base layers back, in place (peft's `merge_and_unload`); returns the plain module."""
    return lora_model.merge_and_unload()
