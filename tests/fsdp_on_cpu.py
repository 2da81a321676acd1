"""`dali-hf` for `accelerate launch` with an FSDP config on CPU processes (gloo), launched by test_engines.py.

Accelerate turns an FSDP config on CPU processes into plain data parallelism: its state promotes only accelerator
device types (GPU, XPU, ...) to FSDP, never MULTI_CPU, and `is_fsdp_enabled` is then False. This script lifts that
one refusal (the FSDP plugin that accelerate built from the launch environment is kept, and the state says FSDP) and
then runs the `dali-hf` command itself, so that the Trainer's FSDP2 path runs as on GPUs: `fully_shard` on the
model, sharded checkpoints, the gathered final save. torch's `fully_shard` and its state-dict functions work over
gloo on CPU.
"""

import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

_accelerator_state_init = AcceleratorState.__init__


def _fsdp_on_cpu_processes(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
        self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin


AcceleratorState.__init__ = _fsdp_on_cpu_processes

if __name__ == "__main__":
    from dali_hf.cli import main

    main(sys.argv[1:])
