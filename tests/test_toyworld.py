"""The toy world: deterministic, consistent modalities, and a reduced DALI run whose aligned audio captions name
the right sound sources far above the baselines."""

import numpy as np
import pytest

from dali_hf.toyworld import SMALL, ToyWorld, run_experiment, source_scores, sources_named
from dali_hf.toyworld.world import AUDIBLE, KINDS


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
    assert (tmp_path / "models" / "1b-ot_exact" / "token_distributions.png").exists()


def test_same_seed_gives_the_same_table(tmp_path):
    """Reproducibility: two runs with one seed write identical results (a minimal size; the demo's stages are the
    same code)."""
    from dali_hf.toyworld import ExperimentSize

    tiny = ExperimentSize(captioner_scenes=120, captioner_steps=50, align_pairs=64, align_epochs=2, distill_clips=16,
                          test_clips=8, objectives=(("attentive_ot", "exact"),), distill=True)
    first = run_experiment(str(tmp_path / "a"), seed=1, size=tiny, log=lambda *_: None)
    second = run_experiment(str(tmp_path / "b"), seed=1, size=tiny, log=lambda *_: None)
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
    assert [r["examples"] for r in first] == [r["examples"] for r in second]
