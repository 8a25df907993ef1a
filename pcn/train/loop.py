"""The training loop of every stage that trains (classification and dense transfer), with its resume state.

A task hands :class:`Loop` its model, optimizer and scheduler, its batches
(``batches(epoch, start)``: that epoch's batches from step ``start`` on) and a
loss per batch; the loop steps the optimizer and the scheduler, clips gradients,
stops on a non-finite loss, shows progress, writes the resume state every
``checkpoint_every`` steps, when a stop is requested and at the end, and resumes
from it.  What happens at the end of an epoch (evaluation, history) is the task's
``on_epoch``.

Resume is exact: the state file holds model, optimizer, scheduler, the extra
modules (EMA), epoch, step within the epoch, every step's loss, the task's history
and last evaluation, and for every rank the RNG states (torch, numpy - timm's Mixup
draws from it - and python) at the last step and at the start of the epoch.
Resuming restores the epoch-start RNG, asks for the epoch's batches from the
resume step on, then restores the step RNG, so on CPU a resumed run is bit-for-bit
the run that was never interrupted.

Under DDP each step's loss is the mean over the ranks (one all-reduce per step,
which also carries the stop request), so a non-finite loss on any rank stops them
all and every rank takes the same branch; rank 0 writes the state file.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from pcn.train import checkpoint as ckpt
from pcn.train import distributed as D

FORMAT = "pcn-train-resume-v2"


# A resume on another rank count reseeds every rank from (seed, step, rank): distinct streams
# for up to this many ranks.
RESEED_STEP_STRIDE = 1000


@dataclass
class LoopState:
    """Where training is; everything here but ``rng_*`` (kept per rank) is saved as is."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    losses: list[float] = field(default_factory=list)  # every step's loss, mean over the ranks
    rng_epoch: dict | None = None  # this rank's RNG when the epoch's batches were asked for
    rng_step: dict | None = None  # this rank's RNG at the resume point (restored after the batches)
    history: list[dict] = field(default_factory=list)  # the task's per-epoch records
    last_eval: dict | None = None
    last_eval_step: int = -1

    def epoch_losses(self, steps_per_epoch: int) -> list[float]:
        """The losses of the epoch that just ended."""
        return self.losses[len(self.losses) - steps_per_epoch :]


AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, precision: str | None = None):
    """Autocast at ``precision`` (fp16, bf16; fp32: none) on any device, CPU included.  With
    none given, the dense transfers' rule: bf16 on a GPU, exact fp32 on a CPU."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: str):
    """fp16's loss scaler (torch's GradScaler, as the official NativeScaler): None otherwise."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP: what is saved, evaluated and reconfigured."""
    return getattr(model, "module", model)


def _nothing(*_: Any) -> None:
    return None


@dataclass
class Loop:
    """One training run: the task's parts (model, optimizer, batches, loss, callbacks) and
    where its resume state goes; :meth:`restore` then :meth:`run`."""

    model: torch.nn.Module  # DDP-wrapped under DDP
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm's: step_update(n) sets the lr of the step after n optimizer steps
    batches: Callable[[int, int], Iterable]  # (epoch, start) -> that epoch's batches from step start on
    loss: Callable[[Any], torch.Tensor]  # one batch -> this rank's loss
    steps_per_epoch: int
    path: Path  # the resume state
    fingerprint: str  # of what determines the trajectory: another run's state is not resumed
    seed: int  # reseeds the RNG streams of a run resumed on another number of ranks
    name: str = "train"  # in messages
    epochs: int = 1
    max_steps: int | None = None
    checkpoint_every: int = 100
    clip_grad: float | None = None
    images_per_step: int | None = None  # the global batch, for the progress bar's rate
    extras: dict[str, torch.nn.Module] = field(default_factory=dict)  # saved with the model (the EMA)
    scaler: Any = None  # fp16's GradScaler (grad_scaler): scales the loss, skips a step with inf gradients
    after_step: Callable[[], None] = _nothing  # after every optimizer step (the EMA update)
    on_step: Callable[[LoopState], None] = _nothing  # after every step, lr still the step's (logging)
    on_epoch: Callable[[LoopState], None] = _nothing  # after every epoch, on every rank (evaluation)
    stop: Callable[[], bool] = lambda: False  # polled every step; True on any rank: save and return
    env: D.DistEnv = field(default_factory=D.DistEnv)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _saved: tuple | None = field(default=None, init=False, repr=False)  # what the state file holds

    # --- resume state ------------------------------------------------------------------

    def save(self, state: LoopState) -> None:
        """Gather every rank's RNG, then rank 0 writes the state file atomically."""
        per_rank = D.all_gather_object({"rng": ckpt.rng_state(), "rng_epoch": state.rng_epoch})
        if not self.env.is_main:
            return
        ckpt.save(
            {
                "format": FORMAT,
                "fingerprint": self.fingerprint,
                "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "extras": {k: m.state_dict() for k, m in self.extras.items()},
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step,
                "losses": torch.tensor(state.losses, dtype=torch.float64),
                "history": state.history,
                "last_eval": state.last_eval,
                "last_eval_step": state.last_eval_step,
                "ranks": per_rank,
            },
            self.path,
        )

    def restore(self, resume: bool = True) -> LoopState:
        """The saved state, loaded into model, optimizer, scheduler and extras; a fresh
        state when there is none (or ``resume`` is False)."""
        if not (resume and self.path.exists()):
            return LoopState()
        saved = ckpt.load(self.path)
        if saved.get("format") != FORMAT or saved.get("fingerprint") != self.fingerprint:
            # An interrupted run of another configuration: its state must not leak into
            # this one.  Keep it aside (nothing is deleted) and start from scratch.
            D.barrier()  # every rank has read it before it moves
            if self.env.is_main:
                stale = self.path.with_suffix(".stale.pth")
                os.replace(self.path, stale)
                warnings.warn(
                    f"{self.path} was written by a different training configuration (or pcn version); "
                    f"moved to {stale.name}, starting from scratch",
                    stacklevel=2,
                )
            return LoopState()
        unwrap(self.model).load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        for k, m in self.extras.items():
            m.load_state_dict(saved["extras"][k])
        state = LoopState(
            epoch=saved["epoch"],
            step_in_epoch=saved["step_in_epoch"],
            global_step=saved["global_step"],
            losses=saved["losses"].tolist(),
            history=saved["history"],
            last_eval=saved["last_eval"],
            last_eval_step=saved["last_eval_step"],
        )
        ranks = saved["ranks"]
        if len(ranks) == self.env.world_size:
            state.rng_step, state.rng_epoch = ranks[self.env.rank]["rng"], ranks[self.env.rank]["rng_epoch"]
        else:
            warnings.warn(
                f"{self.path} was written by {len(ranks)} ranks, resuming on {self.env.world_size}: "
                "RNG streams are reseeded, so this run will not repeat an uninterrupted one exactly",
                stacklevel=2,
            )
            ckpt.seed_everything(self.seed + RESEED_STEP_STRIDE * state.global_step + self.env.rank)
            state.rng_epoch = ckpt.rng_state()
        self.scheduler.step_update(state.global_step)
        if self.env.is_main:
            print(
                f"[{self.name}] resuming from {self.path} at epoch {state.epoch + 1}, "
                f"step {state.step_in_epoch}/{self.steps_per_epoch} (global step {state.global_step})",
                flush=True,
            )
        return state

    # --- the loop ----------------------------------------------------------------------

    def run(self, state: LoopState) -> str:
        """Train from ``state`` (advanced in place) until ``epochs`` or ``max_steps``
        ("finished") or a stop request ("interrupted"); either way the state is saved."""
        while state.epoch < self.epochs and not self._at_max_steps(state):
            outcome = self._epoch(state)
            if outcome == "interrupted":
                self._save_once(state)
                return outcome
            if outcome == "epoch":
                self.on_epoch(state)
        self._save_once(state)  # a later run with more max_steps continues from here
        return "finished"

    def _save_once(self, state: LoopState) -> None:
        """Save unless the file already holds this state (the same on every rank, so all agree)."""
        key = (state.global_step, state.epoch, len(state.history), state.last_eval_step)
        if key != self._saved:
            self.save(state)
            self._saved = key

    def _at_max_steps(self, state: LoopState) -> bool:
        return self.max_steps is not None and state.global_step >= self.max_steps

    def _epoch(self, state: LoopState) -> str:
        """Train from ``state.step_in_epoch`` until the epoch ends ("epoch"), ``max_steps`` is
        reached ("max_steps") or a stop is requested on any rank ("interrupted")."""
        steps = self.steps_per_epoch
        if state.step_in_epoch == 0:
            if state.rng_step is not None:  # resumed exactly at an epoch boundary
                ckpt.set_rng_state(state.rng_step)
                state.rng_step = None
            state.rng_epoch = ckpt.rng_state()
        else:
            ckpt.set_rng_state(state.rng_epoch)
        # Same data order as the uninterrupted run; the iterator is made here, under the epoch's RNG
        # (a DataLoader draws its workers' seed from it).  A state saved after an epoch's last step has none left.
        batches = iter(self.batches(state.epoch, state.step_in_epoch) if state.step_in_epoch < steps else ())
        if state.rng_step is not None:
            ckpt.set_rng_state(state.rng_step)
            state.rng_step = None

        self.model.train()
        bar = tqdm(
            total=steps,
            initial=state.step_in_epoch,
            desc=f"{self.name} epoch {state.epoch + 1}/{self.epochs}" if self.epochs > 1 else self.name,
            disable=not self.env.is_main,
            file=sys.stdout,
            mininterval=1 if sys.stdout.isatty() else 10,
            dynamic_ncols=True,
            leave=sys.stdout.isatty(),
        )
        t0, step0 = time.perf_counter(), state.step_in_epoch
        try:
            for batch in batches:
                stop = self._step(state, batch)
                bar.update(1)
                if self.env.is_main and (state.step_in_epoch % 10 == 0 or state.step_in_epoch == steps):
                    rate = (state.step_in_epoch - step0) / (time.perf_counter() - t0)
                    post = {"loss": f"{state.losses[-1]:.3f}", "lr": f"{self.optimizer.param_groups[0]['lr']:.2e}"}
                    if self.images_per_step:
                        post["img_s"] = f"{rate * self.images_per_step:.0f}"
                    bar.set_postfix(post, refresh=False)
                if state.global_step % self.checkpoint_every == 0:
                    self._save_once(state)
                if stop:
                    return "interrupted"
                if self._at_max_steps(state):
                    return "max_steps"
        finally:
            bar.close()
        state.epoch += 1
        state.step_in_epoch = 0
        return "epoch"

    def _step(self, state: LoopState, batch: Any) -> bool:
        """One optimizer step; True when a stop was requested on any rank."""
        loss = self.loss(batch)
        value, stop = loss.item(), self.stop()
        if self.env.world_size > 1:  # one collective for both: the mean loss and any rank's stop
            both = D.all_reduce_sum(torch.tensor([value, float(stop)], dtype=torch.float64, device=self.device))
            value, stop = both[0].item() / self.env.world_size, both[1].item() > 0
        if not math.isfinite(value):
            # before the first update the lr played no part (a NaN checkpoint is refused at its load)
            why = "lower the lr?" if state.global_step else "no update yet, so not the lr: check the weights and images"
            raise FloatingPointError(
                f"{self.name}: loss is {value} at step {state.global_step} (epoch {state.epoch + 1}); {why}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            if self.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            if self.clip_grad:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            self.scaler.step(self.optimizer)  # skipped when a gradient is inf or NaN; the scale then drops
            self.scaler.update()
        state.global_step += 1
        state.step_in_epoch += 1
        state.losses.append(value)
        self.after_step()
        self.on_step(state)  # the optimizer's lr is still this step's
        self.scheduler.step_update(state.global_step)
        return stop
