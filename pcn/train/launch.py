"""Launchers: run a :class:`TrainJob` through submitit, locally or on SLURM, and wait for it.

Both kinds go through submitit, so requeue, logs and results follow one code path:

- ``local``: ``submitit.LocalExecutor`` starts ``launcher.tasks`` processes on this
  machine (DDP over gloo on CPU, one GPU each when there are GPUs).  Even one task
  runs in a child process, so a stage behaves the same for 1 or N ranks.
- ``slurm``: ``submitit.SlurmExecutor`` with the resources of ``launcher.slurm``
  (:func:`slurm_parameters`); ``srun --kill-on-bad-exit`` ends every rank as soon as
  one fails.

Preemption and time-out: SLURM (or the local controller) sends ``SIGUSR2``.
:class:`TrainTask` (and the transfer stages' task) replaces submitit's handler with
one that only raises a flag (:class:`StopFlag`); the training loop sees it at the
current step, every rank agrees to stop, the state goes to the resume file, and
then submitit's own handler runs from ordinary code: it calls the task's
``checkpoint`` (the same task: it resumes from the file) and requeues the job.  A
job requeued by the scheduler without the signal (``scontrol requeue``) resumes
from the last periodic checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import UncompletedJobError

from pcn.config import LauncherConfig, SlurmConfig
from pcn.train.job import TrainJob
from pcn.train.watchdog import launching_stage_named, watch_launching_stage

TERMINAL_SLURM = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "GONE",
}
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # the local controller has no wall-clock limit worth the name
ERROR_GRACE_S = 60  # a rank failed: the others get this long to fail too, then the job is cancelled
# How often a waiting stage asks SLURM about its job: 26 waiting stages must not load the
# controller (admins ask for no more than a call per 30 s each).  In the first minute the
# delay doubles from 2 s, so a job that fails at once is noticed at once.
SLURM_POLL_S = 30.0
SLURM_FIRST_MINUTE_S = 60.0
FILE_POLL_S = 2.0  # the job's own files (progress, results) cost the controller nothing
# Pending reasons that only a person ends: an admin's hold, SLURM's own hold after a launch
# failed on a node (the job is requeued held), a dependency that can no longer be met. A stage
# waiting on one would wait for ever (and with it Snakemake or DVC): after this long it cancels
# the job and fails, naming the reason. A hold of the user's own (JobHeldUser) is waited on.
STUCK_REASONS = {"JobHeldAdmin", "launch_failed_requeued_held", "DependencyNeverSatisfied"}
STUCK_GRACE_S = 300.0
TAIL_LINES = 30


class TrainJobFailed(RuntimeError):
    """The training job ended without a result; the message names the job and shows its error tail."""


class StopFlag:
    """SIGUSR2 -> a flag the engine polls; the handler it replaced (submitit's) runs later."""

    def __init__(self) -> None:
        # submitit's preemption signal (its USR_SIG, "USR2" unless SUBMITIT_PREEMPT_SIGNAL says otherwise);
        # USR_SIG and the handler replaced here are submitit internals: pinned below 1.6 in pyproject.toml
        name = submitit.JobEnvironment.USR_SIG if os.environ.get("SUBMITIT_EXECUTOR") else "USR2"
        self.signum = getattr(signal, f"SIG{name}")
        self.previous = signal.getsignal(self.signum)
        self.raised = False
        signal.signal(self.signum, self._set)

    def _set(self, signum, frame) -> None:
        self.raised = True

    def __call__(self) -> bool:
        return self.raised

    def hand_over(self) -> None:
        """Run submitit's handler now that the state is saved: rank 0 checkpoints and requeues
        (and exits); other ranks leave without writing a result."""
        signal.signal(self.signum, self.previous)
        if callable(self.previous):
            self.previous(self.signum, None)
            raise SystemExit(0)  # not rank 0: submitit's handler returned; rank 0 requeues the job


class TrainTask(submitit.helpers.Checkpointable):
    """What submitit runs on every rank; requeued as itself (it resumes from ``out_dir/last.pth``)."""

    def __init__(self, job: TrainJob) -> None:
        self.job = job

    def __call__(self) -> dict[str, Any]:
        from pcn.train import engine

        watch_launching_stage()  # a local job ends with the stage that launched it
        flag = StopFlag()  # before the loaders fork workers, which inherit it
        result = engine.run(self.job, stop=flag)
        if result.get("status") == "interrupted":
            flag.hand_over()
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # The engine has already written last.pth (at a step boundary); resubmit the same job.
        return submitit.helpers.DelayedSubmission(TrainTask(self.job))


# --- executors -----------------------------------------------------------------------------


def slurm_parameters(launcher: LauncherConfig, job_name: str, gpus_available: bool = True) -> dict[str, Any]:
    """The ``submitit.SlurmExecutor`` parameters (sbatch names) of ``launcher.slurm``, with the
    overrides of ``launcher.slurm.resources.<stage>`` (``job_name``: the stage, or stage@instance)."""
    s: SlurmConfig = launcher.slurm.for_stage(job_name.split("@")[0])
    params: dict[str, Any] = {
        "job_name": job_name,
        "nodes": s.nodes,
        "ntasks_per_node": launcher.tasks_per_node(s),
        "cpus_per_task": s.cpus_per_task,
        "mem": f"{s.mem_gb}GB",
        "time": s.time_min,
        "signal_delay_s": 90 if s.time_min > 5 else 30,
        "srun_args": ["--kill-on-bad-exit=1"],
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    for key in ("partition", "constraint"):
        if getattr(s, key) is not None:
            params[key] = getattr(s, key)
    extra = {k: getattr(s, k) for k in ("account", "qos") if getattr(s, k) is not None}
    if extra:
        params["additional_parameters"] = extra
    return params


def _executor(launcher: LauncherConfig, job: TrainJob, log_dir: Path):
    if launcher.kind == "slurm":
        ex = submitit.SlurmExecutor(folder=log_dir / "%j", max_num_timeout=launcher.slurm.max_requeues)
        ex.update_parameters(**slurm_parameters(launcher, job.stage))
        return ex
    ex = submitit.LocalExecutor(folder=log_dir / "%j", max_num_timeout=launcher.slurm.max_requeues)
    gpus = launcher.tasks if _local_gpu_count(job.device) >= launcher.tasks else 0
    ex.update_parameters(tasks_per_node=launcher.tasks, gpus_per_node=gpus, timeout_min=LOCAL_TIMEOUT_MIN)
    return ex


def _local_gpu_count(device: str) -> int:
    """CUDA devices a local job may use.  Without the NVIDIA driver's control node there are
    none, and the stage process (which only launches and waits) skips torch's ~2 s import,
    paid by each of the demo's 23 training stages before."""
    if device == "cpu" or not os.path.exists("/dev/nvidiactl"):
        return 0
    import torch

    return torch.cuda.device_count()


# --- waiting ---------------------------------------------------------------------------------


def _slurm_state(job_id: str) -> tuple[str, str]:
    """JobState and Reason from scontrol (works without an accounting database); GONE once purged."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "UNKNOWN", ""
    m = re.search(r"JobState=(\S+)", out.stdout)
    if m:
        reason = re.search(r"\bReason=(\S+)", out.stdout)
        return m.group(1), reason.group(1) if reason and reason.group(1) != "None" else ""
    return ("GONE" if "Invalid job id" in (out.stderr + out.stdout) else "UNKNOWN"), ""


def slurm_query_due(since_submit: float, since_last: float) -> bool:
    """Whether a waiting stage may ask SLURM about its job again: every 30 s, after a first
    minute of doubling delays (2, 4, 8, 16 s ...)."""
    if since_submit < SLURM_FIRST_MINUTE_S:
        return since_last >= max(2.0, since_submit / 2)
    return since_last >= SLURM_POLL_S


def _terminal(job, state: str) -> bool:
    if isinstance(job, submitit.SlurmJob):
        return state in TERMINAL_SLURM
    return state != "RUNNING"


def _outcome(task) -> str | None:
    """'success' / 'error' once a task has written its result (submitit writes it whole), None before."""
    if not task.paths.result_pickle.exists():
        return None
    return "success" if task.exception() is None else "error"


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(line for line in lines[-n:])


def _failure(job, state: str, why: str) -> TrainJobFailed:
    tasks = [job.task(i) for i in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    # The rank that failed first is the cause; the others usually fail on its broken connection.
    failed = sorted(
        (t for t in tasks if _outcome(t) == "error"),
        key=lambda t: t.paths.result_pickle.stat().st_mtime,
    )
    culprit = (
        failed[0] if failed else next((t for t in tasks if "Traceback" in _tail(t.paths.stderr, 10_000)), tasks[0])
    )
    task_id = culprit.task_id if culprit.task_id is not None else 0
    return TrainJobFailed(
        f"training job {job.job_id} {why} (state {state}); last {TAIL_LINES} lines of task {task_id}'s stderr "
        f"({culprit.paths.stderr}):\n{_tail(culprit.paths.stderr)}"
    )


class _JobState:
    """The job's scheduler state, asked for no more often than :func:`slurm_query_due` allows
    (a SLURM job: scontrol, which works without an accounting database; a local job: submitit's
    own controller, which costs the cluster nothing)."""

    def __init__(self, job) -> None:
        self.job, self.slurm = job, isinstance(job, submitit.SlurmJob)
        self.submitted = time.monotonic()
        self.value, self.reason = "PENDING", ""
        self.asked = float("-inf")
        self.stuck_since: float | None = None  # when a pending reason of STUCK_REASONS was first seen

    def __call__(self) -> str:
        if not self.slurm:
            self.value = self.job.state  # local: RUNNING / FINISHED / INTERRUPTED
            return self.value
        now = time.monotonic()
        if slurm_query_due(now - self.submitted, now - self.asked):
            self.asked = now
            self.value, self.reason = _slurm_state(self.job.job_id)
            stuck = self.value == "PENDING" and self.reason in STUCK_REASONS
            self.stuck_since = (self.stuck_since or now) if stuck else None
        return self.value

    def shown(self) -> str:
        """The state as the stage's log shows it: a pending job's reason, and how to lift a hold."""
        if self.value != "PENDING" or not self.reason:
            return self.value
        if self.reason == "JobHeldUser":
            return f"PENDING (JobHeldUser: `scontrol release {self.job.job_id}` lets it run)"
        if self.reason in STUCK_REASONS:
            return f"PENDING ({self.reason}: only an admin lifts it; the stage fails after {STUCK_GRACE_S:.0f} s)"
        return f"PENDING ({self.reason})"

    def stuck_for(self) -> float:
        return 0.0 if self.stuck_since is None else time.monotonic() - self.stuck_since


def wait(job, echo=print) -> dict[str, Any]:
    """Wait for ``job``, echoing its state changes and progress; its result, or :class:`TrainJobFailed`.
    The job's files (progress, results) are read every ``FILE_POLL_S``: a short job (the demo
    grid's take ~8 s) is noticed as it ends; the scheduler is asked as :func:`slurm_query_due` allows."""
    delay = 0.2
    tasks = [job.task(i) for i in range(job.num_tasks)] if job.num_tasks > 1 else [job]
    main = tasks[0]
    state_of = _JobState(job)
    last_state, seen, last_line = None, 0, ""
    ended_at = error_at = None
    while True:
        state, shown, stuck_s = state_of(), state_of.shown(), state_of.stuck_for()
        if shown != last_state:
            echo(f"job {job.job_id}: {shown}")
            last_state = shown
        if stuck_s > STUCK_GRACE_S:
            job.cancel(check=False)
            raise TrainJobFailed(
                f"training job {job.job_id} was pending for {stuck_s:.0f} s with reason "
                f"{state_of.reason}, which only a SLURM admin can lift; cancelled it (`scontrol show job` "
                f"and the node's slurmd log say why). Run the stage again: it resumes from its last checkpoint"
            )
        try:
            with open(main.paths.stdout, "rb") as f:
                f.seek(seen)
                new = f.read()
            seen += len(new)
            parts = [p for p in re.split(r"[\r\n]+", new.decode(errors="replace")) if p.strip()]
            if parts and parts[-1] != last_line:
                last_line = parts[-1]
                echo(f"  {last_line.strip()}")
        except OSError:
            pass
        outcomes = [_outcome(t) for t in tasks]
        if outcomes[0] == "success" and (all(o is not None for o in outcomes) or _terminal(job, state)):
            return main.result()
        if "error" in outcomes:
            error_at = error_at or time.monotonic()
            if _terminal(job, state) or time.monotonic() - error_at > ERROR_GRACE_S:
                if not _terminal(job, state):
                    job.cancel(check=False)
                raise _failure(job, state, "failed")
        elif _terminal(job, state):
            # Give the result file a moment to appear (shared file systems lag).
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > 15:
                raise _failure(job, state, "ended without a result")
        time.sleep(delay)
        delay = min(FILE_POLL_S, delay * 1.5)


class Terminated(KeyboardInterrupt):
    """The stage itself was told to stop (SIGTERM, SIGHUP): it cancels its job, as on Ctrl-C."""


@contextlib.contextmanager
def cancel_on_termination() -> Any:
    """While the stage waits, SIGTERM and SIGHUP (a stopped Snakemake, DVC or `pcn run`, a
    closed terminal, scancel of the stage's own job) end the wait like Ctrl-C does, so the
    job it submitted is cancelled instead of training on unwatched into results/."""

    def stop(signum, frame):
        raise Terminated(signal.Signals(signum).name)

    try:
        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    except ValueError:  # not the main thread: leave the handlers alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def launch(
    job: TrainJob | submitit.helpers.Checkpointable, launcher: LauncherConfig, log_dir: Path, echo=print
) -> dict[str, Any]:
    """Submit ``job`` with ``launcher`` (logs under ``log_dir/<job id>/``), wait, return its metrics.

    ``job`` is a :class:`TrainJob` (run by :class:`TrainTask`) or any other submitit
    Checkpointable task with ``stage`` and ``device`` attributes (the transfer stages').
    """
    log_dir = Path(log_dir).absolute()
    log_dir.mkdir(parents=True, exist_ok=True)
    task = job if isinstance(job, submitit.helpers.Checkpointable) else TrainTask(job)
    executor = _executor(launcher, job, log_dir)
    with launching_stage_named(launcher.kind == "local"):
        submitted = executor.submit(task)
    echo(
        f"submitted {job.stage} as {launcher.kind} job {submitted.job_id} "
        f"({submitted.num_tasks} task{'s' if submitted.num_tasks > 1 else ''}); logs in {submitted.paths.folder}"
    )
    try:
        with cancel_on_termination():
            return wait(submitted, echo=echo)
    except UncompletedJobError as exc:  # result pickle says the job gave up (e.g. requeued too often)
        raise TrainJobFailed(f"training job {submitted.job_id}: {exc}") from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or Terminated
        echo(f"{job.stage}: {exc or 'interrupted'}: cancelling job {submitted.job_id}")
        submitted.cancel(check=False)  # local: the controller stops its tasks; SLURM: scancel
        raise
