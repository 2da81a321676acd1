"""LoRA adapters on the language model for the distillation stage (an extension; the paper trains the audio
projector only): injected through peft for training, folded back into plain layers for the saved folder."""

__all__ = ["inject_lora", "merge_lora"]


def inject_lora(module, r: int, alpha: int, dropout: float, target_modules: list[str]) -> None:
    """Add LoRA adapters to `target_modules` of `module`, in place; only the adapters train, the rest is frozen."""
    from peft import LoraConfig, inject_adapter_in_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    inject_adapter_in_model(lora, module)
    for name, param in module.named_parameters():
        param.requires_grad = "lora_" in name


def merge_lora(module) -> None:
    """Fold injected LoRA adapters into their base layers and put the base layers back, in place."""
    from peft.tuners.lora import LoraLayer

    for name, child in list(module.named_modules()):
        if isinstance(child, LoraLayer):
            child.merge()
            parent_name, _, attribute = name.rpartition(".")
            setattr(module.get_submodule(parent_name) if parent_name else module, attribute, child.get_base_layer())
