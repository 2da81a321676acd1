"""The demo's run.json says what its numbers depend on beyond the seed: the CPU and the package versions, which
are the versions constraints.txt pins for `make install`."""

import importlib.metadata
import json
import os
from pathlib import Path

from dali_hf.demo.machine import PACKAGES, run_record

ROOT = Path(__file__).resolve().parents[1]


def pinned() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    return {name.lower(): version for name, version in (line.split("==") for line in lines
                                                         if line and not line.startswith("#"))}


def test_run_record_names_the_machine_and_the_pinned_package_versions():
    record = json.loads(json.dumps(run_record([0, 1], "small", 2, 1.234)))  # as run.json holds it
    assert (record["seeds"], record["size"], record["workers"], record["wall_minutes"]) == ([0, 1], "small", 2, 1.23)
    machine = record["machine"]
    assert machine["logical_cpus"] == os.cpu_count() and machine["usable_cpus"] == len(os.sched_getaffinity(0))
    assert machine["cpu"] and machine["torch_cpu_capability"] and machine["python"].startswith("3.")
    assert set(record["packages"]) == set(PACKAGES)
    assert record["packages"]["transformers"] == importlib.metadata.version("transformers")
    constraints = pinned()
    unpinned = {name: version for name, version in record["packages"].items() if constraints.get(name) != version}
    assert not unpinned, f"installed versions differ from constraints.txt (re-pin with `make constraints`): {unpinned}"
