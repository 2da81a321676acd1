"""The toy audiovisual world (deterministic from a seed) and the whole DALI recipe run in it on a CPU."""

from .experiment import FULL, SMALL, ExperimentSize, run_experiment, run_experiments, source_scores
from .world import KINDS, Kind, Scene, ToyWorld, sources_named, vocabulary

__all__ = ["FULL", "KINDS", "SMALL", "ExperimentSize", "Kind", "Scene", "ToyWorld", "run_experiment", "run_experiments",
           "source_scores", "sources_named", "vocabulary"]
