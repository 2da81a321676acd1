"""Peak resident memory of an alignment run with and without the language model (CPU, tiny towers).

One captioner folder, saved once: tiny vision and audio towers, and a language model large enough to show (by default
a Llama of width 1024, 8 layers, 32,064 tokens: 0.15 B parameters, 0.6 GB in float32). Each variant runs in its own
Python process, so that neither inherits the other's memory: load the folder (the whole captioner with
`AutoModel.from_pretrained`, or without its language model with `LlavaAudioAlignmentModel.from_pretrained`), train a
few OT steps, save a complete captioner; once with the weights as stored (float32, memory-mapped by the loader, so
pages never read stay off the resident set) and once cast to bfloat16 (every loaded weight materialised, as when a
model is copied to an accelerator). The peak resident set (VmHWM) is read after training and after saving; one
process only imports the libraries, for the interpreter's own share.

    python -m bench.lean_alignment_memory            # --text-hidden 1024 --text-layers 8 --steps 4
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

VARIANTS = ("imports only", "whole captioner", "no LM (LlavaAudioAlignmentModel)")
DTYPES = ("as stored", "bfloat16")


def peak_rss_mib() -> float:
    """The process's peak resident set so far (VmHWM), in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def build_folder(folder: str, text_hidden: int, text_layers: int, vocab_size: int) -> int:
    """Save a captioner with tiny towers and a language model of the given size, its processor and 16 pairs to
    `folder`; returns the language model's parameter count (with lm_head)."""
    import torch

    from dali_hf import LlavaAudioForConditionalGeneration, LlavaAudioProcessor
    from dali_hf.testing import (
        pairs_dataset,
        tiny_audio_encoder,
        tiny_llava,
        tiny_llava_processor,
        tiny_tokenizer,
    )

    tokenizer, _ = tiny_tokenizer()
    llava = tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"), text_hidden=text_hidden,
                       text_layers=text_layers)
    audio_config, feature_extractor = tiny_audio_encoder("ast")
    processor = LlavaAudioProcessor.from_llava(tiny_llava_processor(tokenizer), feature_extractor,
                                               audio_config=audio_config)
    torch.manual_seed(0)
    model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor)
    model.save_pretrained(os.path.join(folder, "captioner"))
    processor.save_pretrained(os.path.join(folder, "captioner"))
    pairs_dataset(16).save_to_disk(os.path.join(folder, "pairs"))
    return sum(p.numel() for p in model.model.language_model.parameters()) + model.lm_head.weight.numel()


def run_variant(variant: str, dtype: str, folder: str, steps: int) -> dict:
    """One alignment run (in this process): its timings and peak resident memory. `dtype` "as stored" keeps the
    loader's memory-mapped float32 tensors (pages never read stay off the resident set); "bfloat16" casts them, so
    every loaded weight is materialised, as it is when a model is copied to an accelerator."""
    import datasets
    import torch
    from transformers import AutoModel, AutoProcessor

    from dali_hf.trainers import AlignmentConfig, DistributionAlignmentTrainer, LlavaAudioAlignmentModel

    torch.set_num_threads(1)
    if variant == VARIANTS[0]:
        return {"after training": peak_rss_mib(), "after saving": peak_rss_mib()}
    captioner = os.path.join(folder, "captioner")
    start = time.perf_counter()
    load = AutoModel.from_pretrained if variant == VARIANTS[1] else LlavaAudioAlignmentModel.from_pretrained
    model = load(captioner, **({"dtype": torch.bfloat16} if dtype == "bfloat16" else {}))
    loaded = time.perf_counter()
    args = AlignmentConfig(output_dir=os.path.join(folder, f"out-{VARIANTS.index(variant)}-{dtype}"), objective="ot",
                           per_device_train_batch_size=4, max_steps=steps, save_strategy="no", report_to=[],
                           use_cpu=True, disable_tqdm=True, logging_strategy="no")
    trainer = DistributionAlignmentTrainer(model=model, args=args, processing_class=AutoProcessor.from_pretrained(
        captioner), train_dataset=datasets.load_from_disk(os.path.join(folder, "pairs")))
    trainer.train()
    trained = time.perf_counter()
    after_training = peak_rss_mib()
    trainer.save_model()
    return {"load_s": loaded - start, "train_s": trained - loaded, "save_s": time.perf_counter() - trained,
            "after training": after_training, "after saving": peak_rss_mib()}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--text-hidden", type=int, default=1024)
    parser.add_argument("--text-layers", type=int, default=8)
    parser.add_argument("--vocab-size", type=int, default=32064)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)  # a child process: one variant
    parser.add_argument("--dtype", choices=DTYPES, default=DTYPES[0], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_variant(args.run, args.dtype, args.folder, args.steps)))
        return []
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        lm_parameters = build_folder(folder, args.text_hidden, args.text_layers, args.vocab_size)
        runs = [(VARIANTS[0], DTYPES[0])] + [(variant, dtype) for dtype in DTYPES for variant in VARIANTS[1:]]
        for variant, dtype in runs:
            child = subprocess.run([sys.executable, "-m", "bench.lean_alignment_memory", "--run", variant, "--dtype",
                                    dtype, "--folder", folder, "--steps", str(args.steps)], capture_output=True,
                                   text=True, check=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
            rows.append({"variant": variant, "dtype": dtype, **json.loads(child.stdout.strip().splitlines()[-1])})
    print(f"alignment run, {args.steps} OT steps of 4 clips, tiny towers, language model {lm_parameters / 1e6:.0f} M "
          f"parameters ({lm_parameters * 4 / 2**20:.0f} MiB float32); peak resident memory (VmHWM), one process each")
    print("| variant | weights loaded | peak RSS after training | peak RSS after saving | load | train | save |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        timings = " | ".join(f"{row[k]:.1f} s" if k in row else "-" for k in ("load_s", "train_s", "save_s"))
        memory = f"{row['after training']:.0f} MiB | {row['after saving']:.0f} MiB"
        print(f"| {row['variant']} | {row['dtype']} | {memory} | {timings} |")
    return rows


if __name__ == "__main__":
    main()
