"""The submitit task of a dense-transfer run: requeued as itself; on preemption the run
saves its state and the task requeues, as classification training's does."""

from __future__ import annotations

import contextlib
from typing import Any

import submitit

from pcn.machine.device import torch_device
from pcn.tracking.runs import system_metrics
from pcn.train.lock import trainer_lock
from pcn.transfer.job import TransferJob


class TransferTask(submitit.helpers.Checkpointable):
    """What submitit (or the local launcher, in this process) runs; resumes from ``last.pth``."""

    def __init__(self, job: TransferJob) -> None:
        self.job = job
        self.stage = job.stage  # what a launcher names the job after
        self.device = job.device

    def __call__(self) -> dict[str, Any]:
        # torch and the task's modules load here, in the job, not in the stage that submits it
        from pcn.train import distributed as D
        from pcn.train.launch import StopFlag
        from pcn.train.watchdog import watch_launching_stage

        if self.job.task == "segmentation":
            from pcn.transfer.segmentation import run
        else:
            from pcn.transfer.detection import run

        watch_launching_stage()  # a local job ends with the stage that launched it
        flag = StopFlag()  # before the loaders fork workers, which inherit it
        env = D.detect()
        D.init(env, torch_device(self.job.device, env.local_rank), self.job.dist_timeout_s)
        try:
            # rank 0 holds the results folder: a second trainer on it is refused
            with (
                trainer_lock(self.job.work_dir, self.job.stage) if env.is_main else contextlib.nullcontext(),
                system_metrics(self.job.mlflow_run_id, self.job.mlflow_uri, enabled=env.is_main),
            ):
                result = run(self.job, env, stop=flag)
        finally:
            D.shutdown()
        if result.get("status") == "interrupted":
            flag.hand_over()  # the state is saved: submitit requeues this task
        return result

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TransferTask(self.job))
