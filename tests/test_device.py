"""One device choice for every entry point (pcn.machine.device.torch_device) and the job specs'
shared runtime fields."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pcn.config import LauncherConfig, SlurmConfig, TrainConfig
from pcn.errors import UserError
from pcn.machine.device import torch_device


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_one_line_and_auto_falls_back_to_the_cpu_saying_so_once(capsys):
    with pytest.raises(UserError, match=r"^runtime.device is 'cuda' but no CUDA device is visible") as err:
        torch_device("cuda")
    assert "\n" not in str(err.value)
    assert torch_device("cpu") == torch.device("cpu")
    assert capsys.readouterr().out == ""  # asked for the CPU: nothing to say
    assert torch_device("auto") == torch.device("cpu")
    assert torch_device("auto", local_rank=1) == torch.device("cpu")
    out = capsys.readouterr().out.splitlines()
    assert len(out) <= 1 and all("running on the CPU" in line for line in out)  # once per process


def test_the_rank_count_follows_the_launcher_kind():
    slurm = SlurmConfig(nodes=2, gpus_per_node=8)
    assert LauncherConfig(kind="local", tasks=3, slurm=slurm).ranks == 3
    assert LauncherConfig(kind="slurm", tasks=3, slurm=slurm).ranks == 16  # one rank per GPU
    assert LauncherConfig(kind="slurm", tasks=3, slurm=SlurmConfig(nodes=2)).ranks == 6  # CPU nodes: tasks each
    # a stage's own SLURM resources (launcher.slurm.resources.<stage>) set its ranks per node
    assert LauncherConfig(tasks=3).tasks_per_node(SlurmConfig(gpus_per_node=4)) == 4


def test_warmup_steps_leave_at_least_one_cosine_step():
    assert TrainConfig(epochs=10, warmup_epochs=0.5).warmup_steps(steps_per_epoch=7) == 4  # round(3.5)
    assert TrainConfig(epochs=1, warmup_epochs=5).warmup_steps(steps_per_epoch=4) == 3
    assert TrainConfig(epochs=1, warmup_epochs=0).warmup_steps(steps_per_epoch=4) == 0


def test_training_and_transfer_jobs_share_the_runtime_fields_with_their_own_timeouts():
    from pcn.train.job import DataSpec, JobSpec, TrainJob
    from pcn.transfer.job import TransferJob

    shared = {f.name for f in dataclasses.fields(JobSpec)}
    assert shared <= {f.name for f in dataclasses.fields(TrainJob)}
    assert shared <= {f.name for f in dataclasses.fields(TransferJob)}
    train = TrainJob(model="m", out_dir="o", num_classes=2, train=TrainConfig(), data=DataSpec())
    dense = TransferJob(
        model="m", out_dir="o", task="detection", init="scratch", config={}, data_root="d", plots_path="p"
    )
    assert (train.dist_timeout_s, dense.dist_timeout_s) == (180, 600)
    # where and how a job runs is not part of what it computes: a resume state survives a change of it
    assert train.fingerprint() == dataclasses.replace(train, threads=8, out_dir="x", dist_timeout_s=5).fingerprint()
    assert dense.fingerprint() == dataclasses.replace(dense, num_workers=4, plots_path="q").fingerprint()
    assert dense.fingerprint() != dataclasses.replace(dense, seed=1).fingerprint()
