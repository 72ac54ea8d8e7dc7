"""How a run spreads over processes: the `Accelerator` each run starts from, and FSDP on CPU.

accelerate reads the launch (`accelerate launch --config_file ...`, or torchrun's environment)
and picks plain DDP or FSDP. On CPU it only ever picks DDP: `distributed_type: FSDP` in the config
is silently run as multi-process data parallelism (unsharded `model.safetensors` and
`optimizer.bin` checkpoints). Yet torch's FSDP2 (`fully_shard`) runs on CPU over gloo, every
collective it needs included, so `fsdp_on_cpu` turns accelerate's own FSDP path back on there.
This is what lets FSDP be tested on a laptop or CI without a GPU: the sharding, the sharded
checkpoints and their resume, the gathered model directory are then the very code a GPU run goes
through (tests/training/test_pretrain_fsdp.py).
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from pathlib import Path

from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    FullyShardedDataParallelPlugin,
    GradientAccumulationPlugin,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)

from .layout import RunLayout


def make_accelerator(
    out: Path, mixed_precision: str | None, trackers: list[str], torch_compile: bool, ddp_timeout: int,
    stateful_data: bool = False,
) -> Accelerator:
    """Devices, processes, precision, compilation and the timeout that ends a run whose other process
    died. accelerate keeps precision and the compile backend in a process-wide singleton that a
    later Accelerator() inherits: a second run in one process (a notebook, tests) would silently keep
    the first one's --mixed_precision and --torch_compile, or refuse its own. Each run starts from
    its flags (the process group, in PartialState, is kept), as transformers' TrainingArguments does.

    `stateful_data`: the data loaders become torchdata's `StatefulDataLoader`s, whose state (a
    stream's position, see `packing.PackedStream`) `save_state` writes into every checkpoint and
    `load_state` restores. Gradients are synchronised every `gradient_accumulation_steps`
    micro-batches, never early at a loader's end: an epoch holds whole steps, a stream never
    ends, and the loop reads a step's micro-batches ahead (`loop.batches`), which would otherwise
    end the loader while earlier micro-batches of its last step are still to run."""
    check_fsdp_support()
    if stateful_data:
        # torchdata 0.11 calls a torch function that torch 2.13 deprecated; nothing the user can act on.
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(RunLayout(out).logs)),
        dynamo_backend="inductor" if torch_compile else None,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=ddp_timeout))],
        dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=stateful_data),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=1, sync_with_dataloader=False),
    )
    fsdp_on_cpu(accelerator)
    return accelerator


# The first accelerate release whose FSDP2 checkpoints resume exactly. Measured on 2 CPU processes
# (tests/training/test_pretrain_fsdp.py): with 1.6, 1.8.1, 1.11 and 1.12 a run resumed from a sharded
# checkpoint trains its first step like the uninterrupted one, then diverges (the optimizer state
# comes back incomplete), with AdamW as with Muon; 1.13 and 1.15 resume exactly; 1.3 (our floor)
# cannot even build its FSDP plugin without a GPU.
FSDP_MIN_ACCELERATE = "1.13"


def check_fsdp_support() -> None:
    """Refuse an FSDP launch on an accelerate that would resume it wrongly, before anything runs."""
    if not fsdp_requested():
        return
    from importlib.metadata import version

    from packaging.version import Version

    found = version("accelerate")
    if Version(found) < Version(FSDP_MIN_ACCELERATE):
        raise ValueError(
            f"FSDP needs accelerate >= {FSDP_MIN_ACCELERATE} (found {found}): older releases restore a sharded "
            "checkpoint's optimizer state incompletely, so a resumed run silently diverges from the one it "
            f"continues. Upgrade it (pip install 'accelerate>={FSDP_MIN_ACCELERATE}'), or launch without FSDP"
        )


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (`accelerate launch` sets this from the config file)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true", "yes")


def fsdp_on_cpu(accelerator: Accelerator) -> bool:
    """Run FSDP where accelerate would fall back to DDP: several CPU processes launched for FSDP.

    The plugin is built from the same environment variables `accelerate launch` sets from the
    config file (fsdp_version, the wrap policy, the state-dict type...), exactly as accelerate
    builds it on GPUs; the distributed type is set on both of accelerate's state singletons, since
    every `AcceleratorState()` re-reads it from `PartialState`. Returns whether it switched."""
    state = accelerator.state
    on_cpu = state.distributed_type in (DistributedType.MULTI_CPU, DistributedType.FSDP)
    has_plugin = getattr(state, "fsdp_plugin", None) is not None  # no attribute at all under DDP
    if not (fsdp_requested() and on_cpu and accelerator.device.type == "cpu") or has_plugin:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    return True
