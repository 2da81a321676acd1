"""`run_recipe` runs `RECIPE`, plain data: the stages in `STAGES`' order, each from the folder of the last stage that
gives a model, a done stage skipped, a failed one (and those after it) run again by the next call. The stages'
own work is replaced here by a record of what each was asked to do; test_stages.py runs the real one end to end."""

import dataclasses
import json
from pathlib import Path

import pytest

from dali_hf import recipe
from dali_hf.trainers.stages import STAGES


@pytest.fixture
def config(tmp_path):
    for data in ("prefix-data", "pairs"):
        (tmp_path / data).mkdir()
    return {"model": "org/base", "output_dir": str(tmp_path / "run"),
            "prefix-tune": {"data": str(tmp_path / "prefix-data")}, "align": {"data": str(tmp_path / "pairs")}}


def _record(monkeypatch, fail: str | None = None) -> list[tuple[str, str, str]]:
    calls = []

    def run(stage):
        def write(config, model_path, folder, log):
            calls.append((stage, model_path, Path(folder).name))
            if stage == fail:
                raise RuntimeError(f"{stage} failed")
            Path(folder).mkdir(parents=True)
        return write

    monkeypatch.setattr(recipe, "RECIPE", tuple(dataclasses.replace(step, run=run(step.stage))
                                                for step in recipe.RECIPE))
    return calls


def test_the_recipe_runs_the_stages_in_order_each_from_the_last_model(config, monkeypatch):
    assert [step.stage for step in recipe.RECIPE] == [stage.name for stage in STAGES]
    calls, lines = _record(monkeypatch), []
    final = recipe.run_recipe(config, log=lines.append)
    run = Path(config["output_dir"])
    assert final == str(run / "2b-distill")
    assert calls == [("prefix-tune", "org/base", "1a-prefix-tune"),
                     ("align", str(run / "1a-prefix-tune"), "1b-align"),
                     ("pseudo-caption", str(run / "1b-align"), "2a-pseudo-caption"),
                     ("distill", str(run / "1b-align"), "2b-distill")]
    assert lines == [f"[{stage}] from {model}" for stage, model, _ in calls]
    for _, model, folder in calls:
        assert json.loads((run / folder / recipe.DONE).read_text()) == {"input_model": model}

    calls.clear()
    lines.clear()
    assert recipe.run_recipe(config, log=lines.append) == final
    assert calls == [] and lines == [f"[{stage.name}] already done, skipped" for stage in STAGES]


def test_a_failed_stage_is_run_again_and_the_done_ones_are_not(config, monkeypatch):
    calls = _record(monkeypatch, fail="align")
    with pytest.raises(RuntimeError, match="align failed"):
        recipe.run_recipe(config, log=lambda line: None)
    run = Path(config["output_dir"])
    assert [stage for stage, _, _ in calls] == ["prefix-tune", "align"] and not (run / "1b-align").exists()
    calls = _record(monkeypatch)
    recipe.run_recipe(config, log=lambda line: None)
    assert [(stage, model) for stage, model, _ in calls] == [
        ("align", str(run / "1a-prefix-tune")), ("pseudo-caption", str(run / "1b-align")),
        ("distill", str(run / "1b-align"))]
