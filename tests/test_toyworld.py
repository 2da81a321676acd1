"""The toy world: deterministic, consistent modalities, and a reduced DALI run whose aligned audio captions name
the right sound sources far above the baselines."""

import json

import numpy as np
import pytest

from dali_hf.demo import SMALL, ToyWorld, run_experiment, source_scores, sources_named
from dali_hf.demo.world import AUDIBLE, KINDS


def test_world_is_deterministic_and_consistent():
    first, second = ToyWorld(seed=3), ToyWorld(seed=3)
    a, b = first.scenes(20, "test"), second.scenes(20, "test")
    assert [[k.name for k in s.visible] for s in a] == [[k.name for k in s.visible] for s in b]
    assert np.array_equal(first.clip(a[0]), second.clip(b[0]))
    assert np.array_equal(np.asarray(first.image(a[0])), np.asarray(second.image(b[0])))
    assert [[k.name for k in s.visible] for s in ToyWorld(seed=4).scenes(20, "test")] != \
        [[k.name for k in s.visible] for s in a]
    assert len(KINDS) >= 10 and any(k.sound is None for k in KINDS)
    scenes = first.scenes(400, "train")
    assert all(1 <= len(s.visible) <= 3 and s.audible for s in scenes)
    assert 0.15 < np.mean([bool(s.offscreen) for s in scenes]) < 0.35  # sounds from off screen
    silent_scene = next(s for s in scenes if any(k.sound is None for k in s.visible))
    caption = first.sound_caption(silent_scene.audible, np.random.default_rng(0))
    assert sources_named(caption) == {k.name for k in silent_scene.audible}  # silent things are not heard


def test_source_scores_by_hand():
    scores = source_scores(["a dog barks and a bell rings", "silence", "you can hear a car"],
                           [{"dog"}, {"rain"}, {"car", "bird"}])
    assert scores["source_precision"] == pytest.approx(2 / 3) and scores["source_recall"] == pytest.approx(2 / 4)
    assert {k.name for k in AUDIBLE} >= sources_named("a dog, a bird and a tree")


@pytest.mark.slow
def test_reduced_world_aligned_audio_names_the_right_sources(tmp_path):
    rows = {(r["objective"], r["mode"], r["stage"]): r for r in run_experiment(str(tmp_path), seed=0, size=SMALL,
                                                                                log=print)}
    aligned = rows[("ot_exact", "audio", "aligned")]["source_f1"]
    assert aligned > rows[("random", "audio", "aligned")]["source_f1"] + 0.1
    assert aligned > rows[("silence", "audio", "aligned")]["source_f1"] + 0.1
    assert aligned > 0.4  # naming one random source per clip scores about 0.17
    assert (tmp_path / "results.json").exists() and (tmp_path / "results.md").exists()
    assert (tmp_path / "models" / "1b-align-ot_exact" / "token_distributions.png").exists()


@pytest.mark.slow
def test_same_seed_same_table_sequential_or_parallel_under_load(tmp_path):
    """Reproducibility: one seed writes byte-identical files whether the objectives run one after the other in one
    process or side by side in two, whatever thread count the caller has and with a CPU-heavy process running beside
    the second run (a minimal size; the demo's stages are the same code). Before every stage ran pinned to one
    thread, the caller's thread count changed the captioner's training and so every row."""
    import subprocess
    import sys

    import torch

    from dali_hf.demo import ExperimentSize

    tiny = ExperimentSize(captioner_scenes=120, captioner_steps=50, align_pairs=64, align_epochs=2, distill_clips=16,
                          test_clips=8, objectives=(("contrastive", "exact"), ("attentive_ot", "exact")), distill=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        first = run_experiment(str(tmp_path / "a"), seed=1, size=tiny, log=lambda *_: None, workers=1)
        torch.set_num_threads(2)
        hog = subprocess.Popen([sys.executable, "-c", "import torch\ntorch.set_num_threads(2)\nx = torch.randn(1500, 1500)"
                                "\nwhile True: x = (x @ x).clamp(-1, 1)"])
        try:
            second = run_experiment(str(tmp_path / "b"), seed=1, size=tiny, log=lambda *_: None, workers=2)
        finally:
            hog.kill()
            hog.wait()
    finally:
        torch.set_num_threads(threads)
    for name in ("results.json", "examples.json", "results.md"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert [r["examples"] for r in first] == [r["examples"] for r in second]
    assert [r["objective"] for r in first] == ["no_audio", "random"] + ["contrastive"] * 4 + ["attentive_ot"] * 4 + [
        "silence"]


def test_seed_summary_by_hand(tmp_path):
    from dali_hf.demo.seeds import COLUMNS, write_seed_summary

    def rows(f1, extra=()):
        keys = [("ot_exact", "audio", "aligned"), ("mmd", "audio", "aligned"), *extra]
        return [{"objective": o, "mode": m, "stage": s, "examples": [], **dict.fromkeys(COLUMNS, 0.5),
                 "source_f1": f1 + i} for i, (o, m, s) in enumerate(keys)]

    summary = write_seed_summary(tmp_path, {0: rows(0.2), 1: rows(0.4), 2: rows(0.9, [("only", "seed", "two")])})
    assert [r["objective"] for r in summary] == ["ot_exact", "mmd"]  # rows missing on some seed are left out
    assert summary[0]["source_f1_mean"] == pytest.approx(0.5)
    assert summary[0]["source_f1_std"] == pytest.approx(((0.3 ** 2 + 0.1 ** 2 + 0.4 ** 2) / 2) ** 0.5)
    assert (summary[1]["source_f1_min"], summary[1]["source_f1_max"]) == pytest.approx((1.2, 1.9))
    assert summary[0]["bleu_4_std"] == 0 and summary[0]["seeds"] == [0, 1, 2]
    written = json.loads((tmp_path / "seeds.json").read_text())
    assert len(written["per_seed"]) == 7 and written["per_seed"][-1]["seed"] == 2
    assert "| ot_exact | audio | aligned | 0.500 ± 0.361 |" in (tmp_path / "seeds.md").read_text()
    with pytest.raises(ValueError, match="at least 2 seeds"):
        write_seed_summary(tmp_path, {0: rows(0.2)})
