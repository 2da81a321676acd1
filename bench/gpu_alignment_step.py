"""One whole alignment step (CLIP targets + CAV-MAE forward/backward + loss, bf16 autocast) at the paper's batch, for
each objective and solver, against the reference code's step (the same forward/backward with a serial Python loop
of `ot.emd2` per clip), measured in the same process. Reduced depth, real sizes: CLIP ViT-L/14-336 with 4 of its 24
blocks (the targets' cost is a fixed share of the step), the full CAV-MAE scale++ (the part that trains), no language
model (alignment does not run it). Prints a Markdown table: median step seconds, speed-up over the reference, peak
GPU memory.

    python -m bench.gpu_alignment_step                 # on a GPU machine: batch 256
    python -m bench.gpu_alignment_step --tiny --batch 8 # smoke run on CPU
"""

import argparse
import statistics
import tempfile
import time

import ot
import torch

CASES = (("contrastive", "exact", 1), ("mmd", "exact", 1), ("ot", "exact", 1), ("ot", "exact", 4),
         ("ot", "sinkhorn", 1), ("attentive_ot", "exact", 4), ("attentive_ot", "sinkhorn", 1))


def build(tiny: bool, device: str):
    from transformers import LlamaConfig, LlavaForConditionalGeneration

    from dali_hf import CavMaeAudioConfig, LlavaAudioForConditionalGeneration
    from dali_hf.testing import llava_1_5_7b_config, tiny_captioner

    if tiny:
        model, processor, _ = tiny_captioner("ast")
        return model.to(device), processor
    config = llava_1_5_7b_config()
    config.vision_config.num_hidden_layers = 4
    config.text_config = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=32)
    with torch.device(device):
        llava = LlavaForConditionalGeneration(config).to(torch.bfloat16)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, CavMaeAudioConfig(), audio_token_id=32002,
                                                          prefix_token_id=32003)
    return model, None


def inputs(model, batch: int, device: str) -> dict:
    audio = model.config.audio_config
    frames, bins = getattr(audio, "target_length", 1024), getattr(audio, "num_mel_bins", 128)
    if audio.model_type == "audio-spectrogram-transformer":
        frames = audio.max_length
    size = model.config.vision_config.image_size
    generator = torch.Generator(device="cpu").manual_seed(0)
    return {"input_features": torch.randn(batch, frames, bins, generator=generator).to(device),
            "pixel_values": torch.randn(batch, 3, size, size, generator=generator).to(device)}


def trainer_for(model, processor, objective, solver, chunks, device):
    from dali_hf.trainers import AlignmentConfig, DistributionAlignmentTrainer

    args = AlignmentConfig(output_dir=tempfile.mkdtemp(), objective=objective, solver=solver, report_to=[],
                           bf16=device == "cuda", use_cpu=device == "cpu", uniform_epochs=0, lambda_values=[100.0],
                           ot_overlap_chunks=chunks, per_device_train_batch_size=1, disable_tqdm=True)
    from dali_hf.trainers.collators import AlignmentCollator

    collator = AlignmentCollator(processor) if processor is not None else (lambda rows: rows)
    trainer = DistributionAlignmentTrainer(model=model, args=args, data_collator=collator)
    trainer.current_gradient_accumulation_steps = 1  # set by train(); the steps here are called directly
    return trainer


def reference_step(trainer, model, batch):
    """The reference code's loss: one exact emd2 per clip in a Python loop (POT moves each clip to the CPU)."""
    with trainer.compute_loss_context_manager():
        audio, image = trainer._tokens(model, batch)
        n, m = audio.shape[1], image.shape[1]
        a = torch.full((n,), 1 / n, device=audio.device, dtype=torch.float32)
        b = torch.full((m,), 1 / m, device=audio.device, dtype=torch.float32)
        loss = torch.stack([ot.emd2(a, b, ot.dist(x.float(), y.float()), numItermax=10_000_000)
                            for x, y in zip(audio, image, strict=True)]).mean()
    loss.backward()


def timed(fn, device, repeats):
    times = []
    for attempt in range(repeats + 1):  # the first run warms up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if attempt:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
    return statistics.median(times), peak


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a CPU smoke run)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = build(args.tiny, device)
    batch = inputs(model, args.batch, device)
    model.train()

    base = trainer_for(model, processor, "ot", "exact", 1, device)
    model = base.model
    reference, reference_peak = timed(lambda: (reference_step(base, model, batch), model.zero_grad()), device,
                                      args.repeats)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"alignment step, batch {args.batch}, {name}, {'tiny models' if args.tiny else 'CLIP-L/14 (4 blocks) + CAV-MAE scale++'}")
    print("| objective | solver | OT chunks | step s | speed-up vs serial emd2 step | peak GiB |")
    print("|---|---|---|---|---|---|")
    print(f"| ot (reference: serial emd2 loop) | exact | - | {reference:.3f} | 1.00x | {reference_peak:.1f} |")
    for objective, solver, chunks in CASES:
        trainer = trainer_for(model, processor, objective, solver, chunks, device)

        def step(trainer=trainer):
            trainer.training_step(model, batch)
            model.zero_grad()

        seconds, peak = timed(step, device, args.repeats)
        print(f"| {objective} | {solver} | {chunks} | {seconds:.3f} | {reference / seconds:.2f}x | {peak:.1f} |")


if __name__ == "__main__":
    main()
