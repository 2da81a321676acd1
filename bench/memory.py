"""Training memory of each DALI stage at full size, per device: weights, gradients, optimiser state, activations.

Weights, gradients and optimiser state follow from the parameter counts (frozen parts in bf16, trained parts in
float32 as the trainers keep them, AdamW's two float32 moments). Activations are measured, not guessed: the bytes
autograd saves for backward (unique storages, parameters excluded) are counted on real CPU tensors at the real
widths for 1 and 2 layers and two sequence lengths, under bf16 autocast with SDPA (flash attention on CPU saves
what it saves on a GPU: q, k, v, output, log-sum-exp), then extended linearly to the real depth, sequence length and
batch, which is exact for these models (every saved tensor is linear in each). With activation checkpointing a
layer keeps only its input, plus one layer's activations while it is recomputed.
"""

from dataclasses import dataclass

import torch

# The measurements the estimate is made of are public too (`*_activation_bytes`, `*_activation_fit`): tests check each
# fit against a direct measurement at the size it extrapolates to.
__all__ = ["CARDS_GIB", "CARD_HEADROOM_GIB", "STAGES", "Stage", "audio_activation_fit", "audio_tower_activation_bytes",
           "card_fit_table", "language_model_activation_bytes", "largest_batch", "linear_activation_fit", "memory_rows",
           "memory_table", "saved_activation_bytes", "stage_memory"]

GiB = 2**30


@dataclass(frozen=True)
class Stage:
    name: str
    trained: tuple[str, ...]
    global_batch: int  # the paper's
    path: str  # "language_model": gradients cross the frozen LM; "audio_tower": the LM is not run
    text_tokens: int = 64  # prompt + caption tokens per example (captions are short; pseudo-captions up to 128)
    loads: tuple[str, ...] = ()  # the parts of the captioner loaded (empty: all of it)


ALIGNMENT = ("audio_tower", "audio_to_vision", "scorers")
STAGES = (
    Stage("1a prefix-tune", ("prefix_embeddings",), 16, "language_model"),
    Stage("1b align (attentive OT), whole captioner", ALIGNMENT, 256, "audio_tower"),
    Stage("1b align (attentive OT), no LM (default)", ALIGNMENT, 256, "audio_tower",
          loads=("vision_tower", "audio_tower", "audio_to_vision")),
    Stage("2b distill", ("audio_multi_modal_projector",), 40, "language_model"),
)
CARDS_GIB = (24, 40, 80)
# CUDA context, kernels and allocator fragmentation: memory of a card that the tensors above cannot use
CARD_HEADROOM_GIB = 1.5


def saved_activation_bytes(module: torch.nn.Module, run) -> int:
    """Bytes of the tensors autograd saves while `run()` builds its graph: unique storages, without `module`'s
    parameters and buffers (they exist anyway)."""
    own = {t.untyped_storage()._cdata for t in [*module.parameters(), *module.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in own:
            saved[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(saved.values())


def _zeros(build):
    """A module built on the meta device, then given zeroed CPU memory: faster than a random initialisation, and the
    values do not matter here."""
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            tensor.zero_()
    return module


def language_model_activation_bytes(text_config, seq_len: int, depth: int) -> int:
    """Bytes saved for backward by one example of `seq_len` tokens through the frozen language model of `text_config`
    cut to `depth` layers, under bf16 autocast with SDPA: gradients reach a trained input (prefix or projector)."""
    from transformers import AutoModelForCausalLM

    config = text_config.__class__(**{**text_config.to_dict(), "num_hidden_layers": depth})
    config._attn_implementation = "sdpa"
    model = _zeros(lambda: AutoModelForCausalLM.from_config(config)).to(torch.bfloat16).requires_grad_(False)
    # the trained part (prefix or audio projector) sits in the input: gradients cross the whole frozen LM
    embeds = torch.zeros(1, seq_len, config.hidden_size, requires_grad=True)
    labels = torch.zeros(1, seq_len, dtype=torch.long)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return saved_activation_bytes(model, lambda: model(inputs_embeds=embeds, labels=labels).loss)


def audio_tower_activation_bytes(audio_config, vision_width: int, depth: int) -> int:
    """Bytes saved for backward by one clip's alignment step (audio tower of `audio_config` cut to `depth` audio-only
    blocks, `audio_to_vision`, the attentive scorers and the OT loss against 576 image tokens of `vision_width`)."""
    from dali_hf.modeling.modeling_llava_audio import build_audio_encoder
    from dali_hf.trainers.objectives import AttentiveMarginals, entropy, ot_loss

    config = audio_config.__class__(**{**audio_config.to_dict(), "num_hidden_layers": depth})
    config._attn_implementation = "sdpa"  # as the language model's: the table's activations are SDPA's
    tower = _zeros(lambda: build_audio_encoder(config)).float()
    projection = torch.nn.Linear(config.hidden_size, vision_width)
    scorers = AttentiveMarginals(vision_width)
    module = torch.nn.ModuleList([tower, projection, scorers])
    features = torch.zeros(1, config.target_length, config.num_mel_bins)
    image = torch.randn(1, 576, vision_width)

    def step():
        audio = projection(tower(features).last_hidden_state)
        alpha, beta = scorers(audio.detach(), image)
        return ot_loss(audio, image, alpha, beta).sum() - (entropy(alpha) + entropy(beta)).sum()

    with torch.autocast("cpu", dtype=torch.bfloat16):
        return saved_activation_bytes(module, step)


def audio_activation_fit(audio_config, vision_width: int) -> tuple[int, int]:
    """(bytes per clip, bytes per layer) of the alignment step; the tower's length is fixed by its input, so only the
    depth is varied (1 and 2 audio-only blocks, the shared blocks kept)."""
    one, two = (audio_tower_activation_bytes(audio_config, vision_width, depth) for depth in (1, 2))
    per_layer = two - one
    return one + (audio_config.num_hidden_layers - 1) * per_layer, per_layer


def linear_activation_fit(measure, real_depth: int, real_seq: int, seqs=(16, 32)) -> tuple[int, int]:
    """(bytes per example without checkpointing, bytes per layer) at the real depth and length, from 4 small
    measurements: linear in depth, and in sequence length for each part."""
    (a1, a2), (b1, b2) = [[measure(seq, depth) for depth in (1, 2)] for seq in seqs]
    per_layer = [a2 - a1, b2 - b1]
    base = [a1 - per_layer[0], b1 - per_layer[1]]

    def at(values):
        slope = (values[1] - values[0]) / (seqs[1] - seqs[0])
        return values[0] + slope * (real_seq - seqs[0])

    layer = at(per_layer)
    return int(at(base) + real_depth * layer), int(layer)


def stage_memory(model, stage: Stage, devices: int = 4) -> dict:
    """Memory of `stage` per device for a LlavaAudio `model` (meta tensors suffice), with the paper's batch split
    over `devices`."""
    from dali_hf.testing import parameter_counts

    config, counts = model.config, parameter_counts(model)
    scorers = 2 * (4 * 1024 * 1024 + 4 * 1024) + 6 * (1024 * 1024 + 1024)  # AttentiveMarginals(1024)
    trained = sum(scorers if part == "scorers" else counts[part] for part in stage.trained)
    trained_in_model = trained - (scorers if "scorers" in stage.trained else 0)  # the scorers are not in the model
    loaded = sum(counts[part] for part in stage.loads) if stage.loads else counts["total"]
    batch = stage.global_batch // devices
    if stage.path == "language_model":
        modality = config.image_seq_length if "prefix" in stage.name else config.audio_seq_length
        prefix = config.num_prefix_tokens if "prefix" in stage.name else 0
        seq = modality + prefix + stage.text_tokens
        text = config.text_config
        per_example, per_layer = linear_activation_fit(lambda s, d: language_model_activation_bytes(text, s, d),
                                                       text.num_hidden_layers, seq)
        depth, width = text.num_hidden_layers, text.hidden_size
    else:
        audio = config.audio_config
        seq, width = config.audio_seq_length, audio.hidden_size
        per_example, per_layer = audio_activation_fit(audio, config.vision_config.hidden_size)
        depth = audio.num_hidden_layers + audio.num_shared_layers
    layer_inputs = depth * seq * width * 2  # bf16 hidden states kept at each checkpointed layer
    checkpointed = per_example - depth * per_layer + layer_inputs + per_layer
    return {
        "stage": stage.name,
        "trained_parameters": trained,
        "batch_per_device": batch,
        "sequence": seq,
        "weights": (loaded - trained_in_model) * 2 + trained * 4,
        "gradients": trained * 4,
        "optimizer": trained * 8,
        "activations": per_example * batch,
        "activations_checkpointed": checkpointed * batch,
    }


def largest_batch(row: dict, card_gib: float, checkpointed: bool = True) -> int:
    """The largest per-device batch of a `stage_memory` row that fits a card of `card_gib` GiB (0: not even one)."""
    fixed = row["weights"] + row["gradients"] + row["optimizer"]
    per_example = row["activations_checkpointed" if checkpointed else "activations"] / row["batch_per_device"]
    return max(int(((card_gib - CARD_HEADROOM_GIB) * GiB - fixed) // per_example), 0)


def card_fit_table(rows: list[dict], cards=CARDS_GIB) -> str:
    """Markdown: per stage and card size, the largest per-device batch that fits, with activation checkpointing
    (and without), next to the paper's batch per device."""
    lines = ["| stage | paper's batch / device | " + " | ".join(f"{card} GB card" for card in cards) + " |",
             "|---|---|" + "---|" * len(cards)]
    for r in rows:
        cells = []
        for card in cards:
            best, plain = largest_batch(r, card), largest_batch(r, card, checkpointed=False)
            fits = "fits" if best >= r["batch_per_device"] else "does not fit"
            cells.append(f"{fits}: up to {best} ({plain} without checkpointing)")
        lines.append(f"| {r['stage']} | {r['batch_per_device']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(devices: int = 4, rows: list[dict] | None = None) -> str:
    """The README's Markdown table for the full-size model (LLaVA-1.5-7B + CAV-MAE scale++)."""
    rows = rows if rows is not None else memory_rows(devices)
    lines = ["| stage | trained params | batch / device (tokens) | weights | gradients | AdamW state | activations "
             "| activations, checkpointed | total | total, checkpointed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fixed = r["weights"] + r["gradients"] + r["optimizer"]
        lines.append(
            f"| {r['stage']} | {r['trained_parameters'] / 1e6:.1f} M | {r['batch_per_device']} ({r['sequence']}) | "
            + " | ".join(f"{value / GiB:.1f} GiB" for value in (
                r["weights"], r["gradients"], r["optimizer"], r["activations"], r["activations_checkpointed"],
                fixed + r["activations"], fixed + r["activations_checkpointed"])) + " |")
    return "\n".join(lines)


def memory_rows(devices: int = 4) -> list[dict]:
    """`stage_memory` of every stage for the full-size model (LLaVA-1.5-7B + CAV-MAE scale++)."""
    from dali_hf.testing import full_size_captioner

    model = full_size_captioner()
    return [stage_memory(model, stage, devices) for stage in STAGES]
