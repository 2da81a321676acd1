"""What a demo run's numbers depend on beyond the seed, recorded in `run.json`: the CPU (its model and the vector
instructions torch uses) and the versions of the packages that compute them. Floating-point results differ between
CPUs and library versions, so the same seed gives other numbers elsewhere."""

import importlib.metadata
import os
import platform

__all__ = ["PACKAGES", "machine_record", "run_record"]

# the packages whose arithmetic or sampling reaches the tables
PACKAGES = ("torch", "torchaudio", "torchcodec", "transformers", "accelerate", "peft", "tokenizers", "datasets",
            "pot", "numpy", "scipy", "safetensors", "pycocoevalcap")


def machine_record() -> dict:
    """The CPU model, its logical CPUs (and those this process may use), the instruction set torch's CPU kernels
    use, the OS and Python."""
    import torch

    return {"cpu": _cpu_model(), "logical_cpus": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "platform": platform.platform(),
            "python": platform.python_version()}


def run_record(seeds: list[int], size: str, workers: int, wall_minutes: float) -> dict:
    """`run.json`: how the demo was run, on what machine, with which package versions (None: not installed)."""
    return {"seeds": seeds, "size": size, "workers": workers, "threads_per_worker": 1,
            "wall_minutes": round(wall_minutes, 2), "machine": machine_record(),
            "packages": {name: _version(name) for name in PACKAGES}}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
