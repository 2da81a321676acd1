"""`make demo`: the whole DALI recipe in the toy audiovisual world, on this CPU.

Generates the world, trains a tiny image captioner on images only, runs prefix tuning, alignment with every
objective, distillation and the zero-shot evaluation on held-out clips, then prints the results table and writes,
to `outputs/demo/` (or `$DEMO_OUT`): `results.json` (rows: objective, mode, stage, the `dali_hf.metrics.score`
keys and source precision / recall / F1), `results.md`, `examples.json` (captions next to their references),
`token_distributions.png` (attentive OT), `pipeline_captions.json` (a couple of generated clips captioned through
`pipeline("audio-captioning")`) and `run.json` (seeds, workers, wall time, the CPU and the package versions: another
CPU or other versions give other numbers for the same seed). The trained models are normal LlavaAudio folders under
`models/`.

The objectives train in parallel, one single-threaded process each (`$DEMO_WORKERS`, default: the cores this process
may use); the tables do not depend on the number of processes or on what else runs on the machine.
`DEMO_SEEDS=0,1,2` (or `--seeds 0,1,2`) runs one experiment per seed (world and training seed) into `seed-N/` and
writes `seeds.md` / `seeds.json`: mean and standard deviation per objective, mode and stage, and the per-seed rows.
"""

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from .experiment import FULL, SMALL, run_experiments, single_threaded
from .machine import run_record
from .seeds import write_seed_summary
from .world import ToyWorld

SIZES = {"full": FULL, "small": SMALL}


def main(argv=None) -> dict[int, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("DEMO_OUT", "outputs/demo"))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("DEMO_SEED", "0")))
    parser.add_argument("--seeds", default=os.environ.get("DEMO_SEEDS"),
                        help="comma-separated seeds: one experiment each plus the mean/std table (overrides --seed)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("DEMO_WORKERS", len(os.sched_getaffinity(0)))),
                        help="single-threaded processes to train in (the results do not depend on it)")
    parser.add_argument("--size", choices=sorted(SIZES), default=os.environ.get("DEMO_SIZE", "full"),
                        help="'small': the reduced world of the tests (one objective, no distillation)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the pipeline('audio-captioning') examples")
    args = parser.parse_args(argv)
    single_threaded()  # the pipeline examples below run here
    seeds = _seeds(args.seeds) if args.seeds else [args.seed]
    out = Path(args.out)
    folders = {seed: out / f"seed-{seed}" for seed in seeds} if args.seeds else {args.seed: out}

    started = time.perf_counter()
    results = run_experiments({seed: str(folder) for seed, folder in folders.items()}, SIZES[args.size],
                              workers=args.workers)
    minutes = (time.perf_counter() - started) / 60
    for seed, folder in folders.items():
        _figure_and_pipeline_captions(folder, seed, pipeline_examples=not args.no_pipeline)
    (out / "run.json").write_text(json.dumps(run_record(seeds, args.size, args.workers, minutes), indent=2))
    print(f"\n{len(seeds)} seed(s), {args.workers} worker process(es): {minutes:.1f} min")
    if len(seeds) > 1:
        write_seed_summary(out, results, header=f"Toy world ({args.size}), seeds {args.seeds}.")
        print((out / "seeds.md").read_text())
        print(f"results: {out / 'seeds.md'}, {out / 'seeds.json'} and seed-N/results.md")
    else:
        print(f"results: {out / 'results.md'} and {out / 'results.json'}")
    return results


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"DEMO_SEEDS / --seeds: expected comma-separated integers such as 0,1,2, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise SystemExit(f"DEMO_SEEDS / --seeds: expected distinct seeds such as 0,1,2, got {text!r}")
    return seeds


def _figure_and_pipeline_captions(out: Path, seed: int, pipeline_examples: bool = True) -> None:
    figure = out / "models" / "1b-align-attentive_ot" / "token_distributions.png"
    if figure.exists():
        shutil.copy(figure, out / "token_distributions.png")
    final = next((out / "models" / name for name in ("2b-distill-attentive_ot", "1b-align-attentive_ot")
                  if (out / "models" / name).exists()), None)
    if final is None or not pipeline_examples:
        return
    from transformers import pipeline

    world = ToyWorld(seed + 1000)
    captioner = pipeline("audio-captioning", model=str(final))
    captions = []
    for scene in world.scenes(3, "test"):
        caption = captioner(world.clip(scene), sampling_rate=16000, max_new_tokens=16)[0]["caption"]
        captions.append({"heard": sorted(k.name for k in scene.audible), "caption": caption})
        print(f"pipeline, {final.name}: heard {', '.join(captions[-1]['heard'])} -> {caption!r}")
    (out / "pipeline_captions.json").write_text(json.dumps(captions, indent=2))


if __name__ == "__main__":
    main()
