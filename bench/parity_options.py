"""The reference-parity options that change training, measured in the toy world: audio-only source F1 of attentive
OT with and without each of them, over several seeds (each seed: its own world, captioner and training draws).

    nice -n 10 python -m bench.parity_options --seeds 0 1 2 --out outputs/parity_options
    nice -n 10 python -m bench.parity_options --objective ot --variants augment --out outputs/parity_options

Variants, each against `baseline` (this package's defaults):
  gradient_reference   AlignmentConfig(attentive_ot_gradient="reference")
  augment              AlignmentConfig(augment=True)  (the reference's noise and time roll)
  preset_reference     prompt_preset="reference" for prefix tuning and captioning (the captioner itself was trained
                       without a system text, as every toy captioner is)

A seed's captioner and prefix are trained once and shared by its variants and by later runs with the same `--out`
(another `--objective`). Single-threaded, so it can run beside other work.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

VARIANTS = {
    "baseline": ({}, "llava"),
    "gradient_reference": ({"attentive_ot_gradient": "reference"}, "llava"),
    "augment": ({"augment": True}, "llava"),
    "preset_reference": ({}, "reference"),
}


def reduced_size():
    from dali_hf.demo.experiment import ExperimentSize

    return ExperimentSize(captioner_scenes=1200, captioner_steps=500, align_pairs=800, align_epochs=8,
                          distill_clips=0, test_clips=150, objectives=(("attentive_ot", "exact"),), distill=False)


def run_seed(seed: int, out: Path, size, variants, objective: str = "attentive_ot", log=print) -> dict[str, float]:
    """Audio-only source F1 of each variant for one seed."""
    from transformers import AutoModel, AutoProcessor

    from dali_hf import (
        CavMaeAudioConfig,
        CavMaeFeatureExtractor,
        LlavaAudioForConditionalGeneration,
        LlavaAudioProcessor,
    )
    from dali_hf.demo.experiment import (
        _evaluator,
        feature_dataset,
        run_alignment,
        run_prefix_tuning,
        train_captioner,
    )
    from dali_hf.demo.world import ToyWorld, vocabulary
    from dali_hf.testing import tiny_llava, tiny_llava_processor, tiny_tokenizer

    torch.manual_seed(seed)
    world = ToyWorld(seed)
    captioner = []

    def trained_captioner():
        if not captioner:
            tokenizer, vocab_size = tiny_tokenizer(vocabulary())
            llava = tiny_llava(vocab_size, tokenizer.convert_tokens_to_ids("<image>"), seed=seed, vision_hidden=64,
                               text_hidden=96)
            started = time.perf_counter()
            image_f1 = train_captioner(llava, tiny_llava_processor(tokenizer), world, size, seed)
            log(f"seed {seed}: captioner trained in {time.perf_counter() - started:.0f}s, image F1 {image_f1:.2f}")
            captioner.extend([llava, tiny_llava_processor(tokenizer)])
        return captioner

    audio_config = CavMaeAudioConfig(hidden_size=64, num_hidden_layers=2, num_shared_layers=1, num_attention_heads=4,
                                     intermediate_size=128, num_mel_bins=32, target_length=128)
    align_data, scores = None, {}
    for preset in sorted({preset for name, (_, preset) in VARIANTS.items() if name in variants}):
        base, prefix_dir = out / f"seed{seed}" / f"base-{preset}", out / f"seed{seed}" / f"1a-{preset}"
        if not (prefix_dir / "config.json").exists():
            llava, llava_processor = trained_captioner()
            processor = LlavaAudioProcessor.from_llava(
                llava_processor, CavMaeFeatureExtractor(num_mel_bins=32, target_length=128),
                audio_config=audio_config, prompt_preset=preset)
            torch.manual_seed(seed)
            model = LlavaAudioForConditionalGeneration.from_llava(llava, audio_config, processor=processor)
            model.save_pretrained(base)
            processor.save_pretrained(base)
            run_prefix_tuning(base, prefix_dir, world, seed)
        processor = AutoProcessor.from_pretrained(prefix_dir)
        if align_data is None:
            align_data = feature_dataset(processor, world, world.scenes(size.align_pairs, "align"))
        evaluate = _evaluator(processor, world, world.scenes(size.test_clips, "test"))
        for name in variants:
            overrides, variant_preset = VARIANTS[name]
            if variant_preset != preset:
                continue
            started = time.perf_counter()
            aligned_dir = out / f"seed{seed}" / f"1b-align-{objective}-{name}"
            run_alignment(prefix_dir, aligned_dir, align_data, objective, "exact", size, seed, overrides)
            row = evaluate(AutoModel.from_pretrained(aligned_dir).eval(), name, "audio", "aligned")
            scores[name] = row["source_f1"]
            log(f"seed {seed}: {name:20s} audio-only source F1 {row['source_f1']:.3f} "
                f"({time.perf_counter() - started:.0f}s)")
    return scores


def summary(results: dict[int, dict[str, float]]) -> str:
    """Markdown table: each variant's mean F1 and spread, and its difference to the baseline per seed."""
    seeds = sorted(results)
    lines = ["| variant | mean F1 | std over seeds | difference to baseline per seed | mean difference | std of differences |",
             "|---|---|---|---|---|---|"]
    for name in VARIANTS:
        if not all(name in results[s] for s in seeds):
            continue
        values = [results[s][name] for s in seeds]
        diffs = [results[s][name] - results[s]["baseline"] for s in seeds]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        diff_spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        lines.append(f"| {name} | {statistics.mean(values):.3f} | {spread:.3f} | "
                     f"{', '.join(f'{d:+.3f}' for d in diffs)} | {statistics.mean(diffs):+.3f} | {diff_spread:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--objective", default="attentive_ot", choices=["attentive_ot", "ot", "mmd", "contrastive"])
    parser.add_argument("--out", default="outputs/parity_options")
    args = parser.parse_args(argv)
    if "baseline" not in args.variants:
        args.variants.insert(0, "baseline")
    torch.set_num_threads(1)
    out = Path(args.out)
    results_file = out / f"results-{args.objective}.json"
    results = {int(k): v for k, v in json.loads(results_file.read_text()).items()} if results_file.exists() else {}
    for seed in args.seeds:
        if all(name in results.get(seed, {}) for name in args.variants):
            continue  # measured by an earlier run
        results[seed] = run_seed(seed, out, reduced_size(), args.variants, args.objective)
        out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1))
    print(summary({s: results[s] for s in args.seeds}))


if __name__ == "__main__":
    main()
