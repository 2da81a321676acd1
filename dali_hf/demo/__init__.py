"""`make demo` (`python -m dali_hf.demo`): the toy audiovisual world, deterministic from a seed (`world`), the whole DALI
recipe run in it on a CPU (`experiment`) and the multi-seed summary (`seeds`).

Demonstration code, not the library: it may import anything in dali_hf (the trainers, the recipe, the metrics and
`dali_hf.testing`'s tiny builders); nothing in the library imports it."""

from .experiment import FULL, SMALL, ExperimentSize, run_experiment, run_experiments, source_scores
from .world import KINDS, Kind, Scene, ToyWorld, sources_named, vocabulary

__all__ = ["FULL", "KINDS", "SMALL", "ExperimentSize", "Kind", "Scene", "ToyWorld", "run_experiment", "run_experiments",
           "source_scores", "sources_named", "vocabulary"]
