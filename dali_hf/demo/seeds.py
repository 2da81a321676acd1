"""The toy-world table over several seeds: mean and standard deviation per objective, mode and stage, next to the
per-seed rows, so a difference between objectives can be read against its spread."""

import json
import math
from pathlib import Path

__all__ = ["COLUMNS", "summarize_seeds", "write_seed_summary"]

COLUMNS = ("source_f1", "source_precision", "source_recall", "bleu_4", "meteor", "rouge_l", "cider_d")
KEY = ("objective", "mode", "stage")


def summarize_seeds(rows_by_seed: dict[int, list[dict]]) -> list[dict]:
    """One row per (objective, mode, stage) present for every seed: `{column}_mean`, `{column}_std` (sample
    standard deviation, n - 1), `{column}_min`, `{column}_max` and `seeds`, in the first seed's row order."""
    if len(rows_by_seed) < 2:
        raise ValueError(f"a spread needs at least 2 seeds, got {sorted(rows_by_seed)}")
    tables = {seed: {tuple(r[k] for k in KEY): r for r in rows} for seed, rows in rows_by_seed.items()}
    first = next(iter(rows_by_seed.values()))
    summary = []
    for key in (tuple(r[k] for k in KEY) for r in first):
        if not all(key in table for table in tables.values()):
            continue
        row = dict(zip(KEY, key, strict=True)) | {"seeds": list(tables)}
        for column in COLUMNS:
            values = [table[key][column] for table in tables.values()]
            mean = sum(values) / len(values)
            row |= {f"{column}_mean": mean,
                    f"{column}_std": math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)),
                    f"{column}_min": min(values), f"{column}_max": max(values)}
        summary.append(row)
    return summary


def write_seed_summary(out: Path, rows_by_seed: dict[int, list[dict]], header: str = "") -> list[dict]:
    """Write `seeds.json` (summary and per-seed rows) and `seeds.md` (mean ± std, then source F1 per seed) to
    `out`; returns the summary rows."""
    summary = summarize_seeds(rows_by_seed)
    per_seed = [{"seed": seed, **{k: v for k, v in r.items() if k != "examples"}}
                for seed, rows in rows_by_seed.items() for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.json").write_text(json.dumps({"seeds": list(rows_by_seed), "summary": summary,
                                                "per_seed": per_seed}, indent=2))
    seeds = list(rows_by_seed)
    lines = ([header, ""] if header else []) + [
        f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))} (world and training seed both varied):",
        "", "| objective | mode | stage | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for r in summary:
        lines.append(f"| {r['objective']} | {r['mode']} | {r['stage']} | "
                     + " | ".join(f"{r[c + '_mean']:.3f} ± {r[c + '_std']:.3f}" for c in COLUMNS) + " |")
    lines += ["", "Source F1 per seed:", "",
              "| objective | mode | stage | " + " | ".join(f"seed {s}" for s in seeds) + " | min | max |",
              "|---|---|---|" + "---|" * (len(seeds) + 2)]
    tables = {seed: {tuple(r[k] for k in KEY): r for r in rows} for seed, rows in rows_by_seed.items()}
    for r in summary:
        key = tuple(r[k] for k in KEY)
        lines.append(f"| {' | '.join(key)} | " + " | ".join(f"{tables[s][key]['source_f1']:.3f}" for s in seeds)
                     + f" | {r['source_f1_min']:.3f} | {r['source_f1_max']:.3f} |")
    (out / "seeds.md").write_text("\n".join(lines) + "\n")
    return summary
