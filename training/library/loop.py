"""The pieces the pretraining loop names, each with the robustness it owes the run:

    LossMeter        the training loss summed on the device, read in one reduce at logging steps
    NonFiniteGuard   --on_nonfinite: stop on a NaN/inf loss, or leave that step's update out
    StopOnSignal     Ctrl-C / SIGTERM finishes the step, saves, and writes the model
    batches          micro-batches epoch after epoch, from exactly where a resumed run left off
    lost_a_process   a collective operation failing because another process died or hung
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator

from .layout import RunLayout
from .run_dir import complete_checkpoints


class LossMeter:
    """The training loss summed on the device between logging steps, read (with the stop flags of
    every process) in one reduce: the loop's only host sync outside evaluation and saving."""

    def __init__(self, accelerator: Accelerator, step: int, tokens_per_step: int) -> None:
        self.accelerator, self.tokens_per_step = accelerator, tokens_per_step
        self.loss_sum = torch.zeros((), device=accelerator.device)
        self.count, self.step, self.clock = 0, step, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss.detach()  # no .item(): the device runs ahead of the host
        self.count += 1

    def restart_clock(self) -> None:
        self.clock = time.perf_counter()

    def read(self, step: int, stop_requested: bool) -> tuple[float, bool, float]:
        """(mean micro-batch loss over every process, whether any process was asked to stop, tokens/s)."""
        flag = torch.tensor(float(stop_requested), device=self.accelerator.device)
        loss_sum, stops = self.accelerator.reduce(torch.stack([self.loss_sum, flag]), reduction="sum").tolist()
        now = time.perf_counter()
        tokens_per_s = (step - self.step) * self.tokens_per_step / (now - self.clock)
        # nan when every micro-batch since the last read was skipped (--on_nonfinite skip)
        loss = loss_sum / (self.count * self.accelerator.num_processes) if self.count else math.nan
        self.loss_sum.zero_()
        self.count, self.step, self.clock = 0, step, now
        return loss, stops > 0, tokens_per_s


def all_finite(accelerator: Accelerator, loss: torch.Tensor, grad_norm) -> bool:
    """Whether the loss (and gradient norm, at a step's last micro-batch) is finite on every process:
    one reduce, so all processes skip the same step (a host sync, paid only with --on_nonfinite skip)."""
    values = [loss.detach().float().reshape(())]
    if grad_norm is not None:
        values.append(torch.as_tensor(grad_norm, dtype=torch.float32, device=loss.device).reshape(()))
    bad = (~torch.isfinite(torch.stack(values))).any().float()
    return accelerator.reduce(bad, reduction="sum").item() == 0


def non_finite_message(loss: float, step: int, root: Path) -> str:
    found = complete_checkpoints(root)
    keep = f"the last good checkpoint, {found[-1]}, is kept" if found else "no checkpoint was written yet"
    return (
        f"the training loss became {loss} by step {step}: stopping; {keep}. Lower --learning_rate, or raise "
        "--num_warmup_steps, then --resume (or start afresh); or pass --on_nonfinite skip to leave such steps out"
    )


class NonFiniteGuard:
    """--on_nonfinite: with `stop`, a NaN/inf loss ends the run at the next read of the loss (the last
    good checkpoint is kept); with `skip`, a micro-batch whose loss or gradient is not finite on any
    process spoils its optimizer step, whose update is then dropped on every process alike. Checking
    every micro-batch costs a host sync each, so only `skip` pays for it."""

    def __init__(self, mode: str, accelerator: Accelerator, skipped: list[int]) -> None:
        self.mode, self.accelerator, self.skipped = mode, accelerator, skipped
        self.finite, self.spoiled = True, False

    def allows_update(self, loss: torch.Tensor, grad_norm) -> bool:
        """Whether this micro-batch's `optimizer.step()` may run. It decides and touches nothing: the
        loop steps and zeroes. Inside `accelerator.accumulate` the step is a no-op until a step's last
        micro-batch; there it is refused when any micro-batch of the step was not finite (`skip`), so
        the gradients are zeroed and nothing reaches the weights."""
        sync = self.accelerator.sync_gradients
        if self.mode == "skip":
            self.finite = all_finite(self.accelerator, loss, grad_norm if sync else None)
            self.spoiled = self.spoiled or not self.finite
        return not (self.spoiled and sync)

    def end_step(self, step: int, logger) -> None:
        """At a step's end: record and report a skipped update."""
        if self.spoiled:
            self.skipped.append(step)
            self.spoiled = False
            logger.warning(
                f"step {step}: non-finite loss or gradient; this step's update was skipped "
                f"(--on_nonfinite skip; {len(self.skipped)} skipped so far)",
                main_process_only=True,
            )

    def check(self, loss: float, step: int, checkpoints: Path) -> None:
        """At a read of the training loss: with `stop`, a non-finite loss ends the run."""
        if not math.isfinite(loss) and self.mode == "stop":
            raise FloatingPointError(non_finite_message(loss, step, checkpoints))


def batches(loader, state: dict, accelerator: Accelerator, seed: int, accumulation: int = 1,
            stream: bool = False) -> Iterator:  # fmt: skip
    """Micro-batches epoch after epoch, from where `state` says, until the caller stops.

    The epoch seeds the order (the same on every process and every resume); a resumed run skips the
    micro-batches of its epoch it already trained on, unless the loader is a `stream` that resumes
    itself (its state came back with the checkpoint); the counters in `state` are advanced before
    each batch is handed out, so a checkpoint saved while it is processed records it as seen. Dropout
    masks are drawn from (seed, micro-batch, rank) alone: a resumed run draws what the uninterrupted
    one did, whatever else touched the generator meanwhile.

    Batches with labels left out (documents kept apart: no target where a document starts) carry
    `num_items_in_batch`, from the labels of the whole optimizer step on every process, read a step
    ahead: each micro-batch's loss is then its sum over the step's mean count, so the step's
    gradient is the mean over its tokens, whatever the split into micro-batches and processes
    (a mean per micro-batch would weigh a token by how many others share its micro-batch)."""
    while True:
        loader.set_epoch(state["epoch"])
        skip = 0 if stream else state["micro_in_epoch"]
        step: list = []
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            step.append(batch)
            if "position_ids" in batch and len(step) < accumulation:
                continue  # the epoch holds whole steps (EpochSampler), so a step never spans two
            if "position_ids" in batch:
                step_items(step, accelerator, accumulation)
            for micro_batch in step:
                torch.manual_seed(hash((seed, state["micro_total"], accelerator.process_index)) & (2**63 - 1))
                state["micro_in_epoch"] += 1
                state["micro_total"] += 1
                yield micro_batch
            step = []
        state["epoch"], state["micro_in_epoch"] = state["epoch"] + 1, 0


def step_items(step: list[dict], accelerator: Accelerator, accumulation: int) -> None:
    """Sets each micro-batch's `num_items_in_batch` to the step's labelled tokens over all processes,
    divided by the micro-batches that share them: the loss divides its sum by it, and accelerate
    (1/accumulation) and DDP (mean over processes) scale back to one mean over the step's tokens.
    One reduce, on the device: no host sync."""
    count = sum((b["labels"][:, 1:] != -100).sum() for b in step)  # position t predicts label t+1
    total = accelerator.reduce(count.float(), reduction="sum")
    for b in step:
        b["num_items_in_batch"] = total / (accumulation * accelerator.num_processes)


class StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next step boundary, which then
    saves a checkpoint and writes the model directory; a second signal stops at once."""

    signals = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving (again to abort)", file=sys.stderr)

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def lost_a_process(e: RuntimeError) -> bool:
    """Whether `e` is a collective operation failing because another process is gone or stuck."""
    dist_error = getattr(torch.distributed, "DistError", ())
    text = str(e).lower()
    signs = ("timed out", "timeout", "connection reset", "connection closed", "broken pipe", "nccl", "gloo")
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and (isinstance(e, dist_error) or any(s in text for s in signs))


def lost_a_process_message(e: RuntimeError, output_dir: str | Path, ddp_timeout: int) -> str:
    found = complete_checkpoints(RunLayout(Path(output_dir)).checkpoints)
    resume = f"the newest complete checkpoint is {found[-1]}" if found else "no checkpoint was written yet"
    return (
        f"process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')} lost contact with the others: "
        f"a collective operation failed ({' '.join(str(e).split())[:300]}). Another process most likely died "
        f"(out of memory, killed, a crash: see its own error above) or hung; waits are cut off after --ddp_timeout "
        f"{ddp_timeout} s. {resume}; fix the cause and relaunch with --resume"
    )
