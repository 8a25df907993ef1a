"""Training: the job spec, the DeiT-recipe loop, checkpoints and the local/SLURM launchers.

- ``pcn.train.engine.run(job)`` trains in this process (one rank, or one DDP rank of a
  launched job);
- ``pcn.train.loop.Loop`` is the training loop and its exact resume state, which the
  classification engine and the dense-transfer stages (``pcn.transfer``) both train through;
- ``pcn.train.launch.launch(job, launcher, log_dir)`` runs it through submitit, locally
  or on SLURM, and waits (``TrainJobFailed`` when the job fails).

The dry run of the paper scale's jobs is the DAG's (``pcn.dag.dryrun``).
"""

from pcn.train.job import DataSpec, JobSpec, TrainJob

__all__ = ["DataSpec", "JobSpec", "TrainJob"]
