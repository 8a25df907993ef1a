"""Where jobs run: the launcher (local or SLURM), its partitions and limits, threads, tracking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pcn.config.base import Section


class StageResources(Section):
    """One stage's job, where it differs from what the stage table gives it (unset: the table's)."""

    partition: str | None = None
    nodes: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)
    cpus_per_task: int | None = Field(None, ge=1)
    mem_gb: int | None = Field(None, ge=1)
    time_min: int | None = Field(None, ge=1)


class PartitionLimits(Section):
    """What one partition grants a job (unset: no limit); `pcn dryrun` refuses a job that asks more.
    A cluster that answers (sinfo, scontrol) gives its own limits; these stand in where none does."""

    max_time_min: int | None = Field(None, ge=1)
    max_nodes: int | None = Field(None, ge=1)
    cpus_per_node: int | None = Field(None, ge=1)
    mem_gb_per_node: int | None = Field(None, ge=1)
    gpus_per_node: int | None = Field(None, ge=0)


class SlurmConfig(Section):
    """Resources of the training jobs on a SLURM cluster (passed to submitit); partition,
    account, qos and constraint reach every job, the executor plugin's too."""

    partition: str | None = None
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    cpus_per_task: int = Field(2, ge=1)
    mem_gb: int = Field(8, ge=1)
    time_min: int = Field(60, ge=1)
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    max_requeues: int = Field(3, ge=0)
    # stage name (as in dvc.yaml, without @instance) -> its job's resources where they differ
    resources: dict[str, StageResources] = Field(default_factory=dict)
    # partition name ("default": jobs that name none) -> its limits, where no cluster answers
    limits: dict[str, PartitionLimits] = Field(default_factory=dict)

    def for_stage(self, stage: str) -> SlurmConfig:
        """These settings with stage ``stage``'s overrides applied (a training stage's job)."""
        own = self.resources.get(stage)
        if own is None:
            return self
        return self.model_copy(update={k: v for k, v in own.model_dump().items() if v is not None})


class LauncherConfig(Section):
    """How training-like stages run: in this process tree, or as a SLURM job."""

    kind: Literal["local", "slurm"] = "local"
    tasks: int = Field(1, ge=1, description="processes (DDP ranks) for the local launcher")
    slurm: SlurmConfig = SlurmConfig()

    @property
    def ranks(self) -> int:
        """The DDP ranks of one training-like job: ``tasks`` locally; on SLURM
        :meth:`tasks_per_node` on each of its nodes."""
        if self.kind == "slurm":
            return self.slurm.nodes * self.tasks_per_node(self.slurm)
        return self.tasks

    def tasks_per_node(self, slurm: SlurmConfig) -> int:
        """A SLURM job's ranks per node under ``slurm`` (this launcher's, or a stage's
        override of it): one per GPU, or ``tasks`` on CPU nodes."""
        return slurm.gpus_per_node or self.tasks


def batch_per_rank(batch_size: int, ranks: int, name: str, mixup: bool = False) -> int:
    """The images each rank takes per step: the global ``batch_size`` split over ``ranks``.

    Refused, naming the stage ``name``, where it does not split, or where it leaves an odd
    count with mixup or cutmix on (``mixup``): timm's ``Mixup`` pairs each image with its
    mirror within the rank's batch and fails at the first step otherwise.
    """
    if batch_size % ranks:
        raise ValueError(f"{name}: batch_size = {batch_size} does not split over {ranks} ranks")
    per_rank = batch_size // ranks
    if mixup and per_rank % 2:
        raise ValueError(
            f"{name}: batch_size = {batch_size} over {ranks} ranks is {per_rank} per rank; "
            "mixup and cutmix need an even batch per rank"
        )
    return per_rank


class RuntimeConfig(Section):
    threads: int = Field(1, ge=1, description="torch intra-op threads per stage process on CPU")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TrackingConfig(Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI; MLFLOW_TRACKING_URI wins; default sqlite:///mlflow.db"
    )
    experiment: str = "patchconvnet"
