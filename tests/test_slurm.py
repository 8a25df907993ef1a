"""The launchers on a real one-node SLURM cluster (scripts/slurm-cluster.sh) and locally:
2-rank DDP through submitit, requeue after a preemption signal or a scheduler requeue,
a crash in one rank, and the paper-scale dry run."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from pcn.config import AugConfig, LauncherConfig, SlurmConfig, resolve
from pcn.dag.dryrun import dry_run, plan
from pcn.train import checkpoint as ckpt
from pcn.train.job import TrainJob
from pcn.train.launch import TrainJobFailed, TrainTask, launch, wait

sys.path.insert(0, str(Path(__file__).parent))
from test_train import assert_same_weights, comparable, make_job

ROOT = Path(__file__).resolve().parents[1]

# The subclasses below travel into the jobs by value (the job processes cannot import tests/).
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# 8 epochs x 3 steps of 2 ranks x 8 images: long enough to interrupt after the first checkpoint.
RECIPE = {
    "aug": AugConfig(mixup=0.8, cutmix=1.0, label_smoothing=0.1),
    "drop_path": 0.1,
    "ema_decay": 0.9,
    "clip_grad": 1.0,
    "epochs": 8,
    "batch_size": 16,
    "checkpoint_every_steps": 2,
}
SLURM = SlurmConfig(cpus_per_task=1, mem_gb=2, time_min=10)


def ddp_job(root: Path, out: Path) -> TrainJob:
    return make_job(root, out, **RECIPE)


def launcher(kind: str, tasks: int = 2) -> LauncherConfig:
    return LauncherConfig(kind=kind, tasks=tasks, slurm=SLURM)


@pytest.fixture(scope="module")
def local_ddp(tiny_imagefolder, tmp_path_factory):
    """The reference: the same 2-rank job on the local launcher (LocalExecutor, gloo)."""
    out = tmp_path_factory.mktemp("local_ddp")
    t0 = time.monotonic()
    result = launch(ddp_job(tiny_imagefolder, out / "run"), launcher("local"), out / "logs")
    print(f"local 2-rank run: {time.monotonic() - t0:.1f}s")
    return out / "run", result


def slurm_log(job_dir: Path, pattern: str = "*_0_log.out") -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(job_dir.rglob(pattern)))


@pytest.mark.slow
def test_local_ddp_two_ranks(local_ddp):
    out, result = local_ddp
    assert result["status"] == "finished" and result["world_size"] == 2
    assert result["global_step"] == 8 * 3 and len(result["history"]) == 8
    assert result["val_images"] == 3 * 4  # the ranks' shards of val add up to it, once each
    assert (out / "model.pth").exists()


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_ddp_matches_local(slurm_cluster, tiny_imagefolder, tmp_path, local_ddp):
    ref_out, ref = local_ddp
    t0 = time.monotonic()
    result = launch(
        ddp_job(tiny_imagefolder, tmp_path / "run"),
        launcher("slurm"),
        tmp_path / "logs",
    )
    print(f"slurm 2-rank run: {time.monotonic() - t0:.1f}s")
    assert result["world_size"] == 2
    assert comparable(result) == comparable(ref)
    assert_same_weights(ref_out, tmp_path / "run")


def _submit(job: TrainJob, log_dir: Path, task=None):
    import submitit

    from pcn.train.launch import slurm_parameters

    ex = submitit.SlurmExecutor(folder=log_dir / "%j", max_num_timeout=3)
    ex.update_parameters(**slurm_parameters(launcher("slurm"), job.stage))
    return ex.submit(task or TrainTask(job))


def _wait_for_checkpoint(job, path: Path, timeout_s: float = 300) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if path.exists():
            # Written atomically: a failed read only means "not yet".
            with contextlib.suppress(Exception):
                return ckpt.load(path)["global_step"]
        if job.paths.result_pickle.exists():
            pytest.fail("the job finished before it could be interrupted")
        time.sleep(0.2)
    pytest.fail(f"no checkpoint after {timeout_s}s; job log:\n{slurm_log(job.paths.folder, '*.err')[-3000:]}")


@pytest.mark.slow
@pytest.mark.slurm
def test_preempted_job_requeues_and_matches(slurm_cluster, tiny_imagefolder, tmp_path, local_ddp):
    """SIGTERM + SIGUSR2 as SLURM sends on preemption (submitit's ``_interrupt``): the engine
    saves at the next step, submitit requeues, the job resumes and ends bit-identical."""
    ref_out, ref = local_ddp
    job = ddp_job(tiny_imagefolder, tmp_path / "run")
    t0 = time.monotonic()
    submitted = _submit(job, tmp_path / "logs")
    step = _wait_for_checkpoint(submitted, job.last_path)
    submitted._interrupt()  # scancel --signal TERM, then --signal USR2
    result = wait(submitted)
    elapsed = time.monotonic() - t0
    log = slurm_log(submitted.paths.folder)
    print(f"preempted at step >= {step}; finished after requeue in {elapsed:.1f}s")
    assert "interrupted at global step" in log and "resuming from" in log, log[-3000:]
    assert result["global_step"] == 24
    assert comparable(result) == comparable(ref)
    assert_same_weights(ref_out, tmp_path / "run")


@pytest.mark.slow
@pytest.mark.slurm
def test_scheduler_requeue_resumes_from_last_checkpoint(slurm_cluster, tiny_imagefolder, tmp_path, local_ddp):
    """``scontrol requeue`` (no signal to the job: it is killed) -> restart from the periodic checkpoint."""
    ref_out, ref = local_ddp
    job = ddp_job(tiny_imagefolder, tmp_path / "run")
    submitted = _submit(job, tmp_path / "logs", task=SlowUntilRequeued(job))
    _wait_for_checkpoint(submitted, job.last_path)
    subprocess.run(["scontrol", "requeue", submitted.job_id], check=True)
    result = wait(submitted)
    assert "resuming from" in slurm_log(submitted.paths.folder)
    assert comparable(result) == comparable(ref)
    assert_same_weights(ref_out, tmp_path / "run")


def _patch_parts(patch) -> None:
    """In a job process: apply ``patch(parts)`` to the optimizer/scheduler the engine builds."""
    from pcn.train import engine

    real = engine.build_parts

    def build_parts(*args, **kwargs):
        parts = real(*args, **kwargs)
        patch(parts)
        return parts

    engine.build_parts = build_parts


class CrashOnRankOne(TrainTask):
    """Rank 1 fails at its third optimizer step; rank 0 is then blocked in a collective."""

    def __call__(self):
        from pcn.train import distributed

        if distributed.detect().rank == 1:  # rank 1 writes no checkpoint: the patch need not pickle

            def failing_scheduler(recipe):
                step_update = recipe.scheduler.step_update

                def failing(num_updates, *a, **k):
                    if num_updates == 3:
                        raise RuntimeError("injected failure on rank 1")
                    return step_update(num_updates, *a, **k)

                recipe.scheduler.step_update = failing

            _patch_parts(failing_scheduler)
        return super().__call__()


class SlowUntilRequeued(TrainTask):
    """Steps take a second until the job first resumes, so it cannot finish inside the
    KillWait between ``scontrol requeue``'s SIGTERM (which submitit ignores) and its
    SIGKILL.  Sleeping changes no numbers; an optimizer hook is not in its state_dict."""

    def __call__(self):
        if not self.job.last_path.exists():
            _patch_parts(lambda parts: parts.optimizer.register_step_pre_hook(lambda *_: time.sleep(1.0)))
        return super().__call__()


@pytest.mark.slow
@pytest.mark.slurm
def test_crash_in_one_rank_fails_the_stage_quickly(slurm_cluster, tiny_imagefolder, tmp_path):
    job = ddp_job(tiny_imagefolder, tmp_path / "run")
    t0 = time.monotonic()
    submitted = _submit(job, tmp_path / "logs", task=CrashOnRankOne(job))
    with pytest.raises(TrainJobFailed) as err:
        wait(submitted)
    elapsed = time.monotonic() - t0
    print(f"slurm crash detected after {elapsed:.1f}s")
    message = str(err.value)
    assert f"training job {submitted.job_id}" in message
    assert "injected failure on rank 1" in message and "task 1" in message
    assert elapsed < 150  # srun --kill-on-bad-exit ends rank 0; nothing waits for a timeout
    state = subprocess.run(
        ["scontrol", "show", "job", "-o", submitted.job_id],
        check=False,
        capture_output=True,
        text=True,
    ).stdout
    assert "JobState=FAILED" in state or "JobState=CANCELLED" in state, state


@pytest.mark.slow
def test_crash_in_one_rank_fails_locally_too(tiny_imagefolder, tmp_path):
    import submitit

    job = ddp_job(tiny_imagefolder, tmp_path / "run")
    ex = submitit.LocalExecutor(folder=tmp_path / "logs" / "%j")
    ex.update_parameters(tasks_per_node=2, timeout_min=30)
    t0 = time.monotonic()
    submitted = ex.submit(CrashOnRankOne(job))
    with pytest.raises(TrainJobFailed, match="injected failure on rank 1"):
        wait(submitted)
    elapsed = time.monotonic() - t0
    print(f"local crash detected after {elapsed:.1f}s")
    assert elapsed < 150  # rank 0's gloo collective fails as soon as rank 1's socket closes


def test_dry_run_paper_s60():
    raw = yaml_params()
    params = resolve({**raw, "scale": "paper"})
    cfg, s = params.pretrain, params.launcher.slurm
    # Independent arithmetic for the assumptions the paper scale states: 2 nodes x 8 GPUs,
    # global batch 2048, repeated augmentation x3 (timm's sampler keeps
    # floor(N / 256) * 256 / ranks images per rank), 5 warm-up epochs.
    assert (s.nodes, s.gpus_per_node, cfg.batch_size) == (2, 8, 2048)
    per_rank_images = (1_281_167 // 256 * 256) // 16
    steps = per_rank_images // 128
    p = plan(params)
    assert p.ranks == 16 and p.batch_per_rank == 128
    assert p.samples_per_rank == per_rank_images == 80_064
    assert p.steps_per_epoch == steps == 625
    assert p.total_steps == 625 * cfg.epochs and p.warmup_steps == 5 * 625
    assert p.lr == pytest.approx(cfg.lr * 2048 / cfg.lr_base_batch)
    # S60 at 224 px is the calibration point itself: it trains at a third of the paper's
    # 1129 images/s of inference.
    assert (params.model.name, cfg.img_size) == ("patchconvnet_s60", 224)
    assert p.gpu_hours == pytest.approx(625 * cfg.epochs * 2048 / (1129 / 3) / 3600)
    assert p.sbatch["nodes"] == 2 and p.sbatch["ntasks_per_node"] == 8 and p.sbatch["gpus_per_node"] == 8
    assert p.sbatch["cpus_per_task"] == s.cpus_per_task and p.sbatch["time"] == s.time_min
    t0 = time.monotonic()
    text = dry_run(params)
    assert time.monotonic() - t0 < 60, "counting the grid's MACs must not take minutes"
    for needle in (
        "2 node(s) x 8 GPUs = 16",
        "2048 = 16 x 128",
        "625 per epoch",
        f"{625 * cfg.epochs:,}",
        "GPU-hours",
        "nothing is submitted",
        "depth_width@w1024-d120",
        "experiment grid: ",
    ):
        assert needle in text, text

    # GPU-hours follow the MACs of each job's model at its resolution.
    import timm
    import yaml

    import pcn.models  # noqa: F401  (registers the models)
    from pcn.dag.dryrun import REFERENCE, gmacs, grid_share, jobs
    from pcn.eval.complexity import count_gmacs

    numbers = yaml.safe_load((Path(__file__).resolve().parents[1] / "paper" / "numbers.yaml").read_text())
    s60 = next(r for r in numbers["model_zoo"] if r["model"] == REFERENCE["model"])
    assert REFERENCE["images_per_s"] == s60["throughput"] and REFERENCE["img_size"] == 224
    by_name = {j.name: j for j in jobs(params)}
    ft = params.finetune
    assert by_name["finetune"].gmacs == pytest.approx(s60["gmacs"] * (ft.img_size / 224) ** 2, rel=0.05)
    assert by_name["finetune"].gpu_hours == pytest.approx(
        plan(params, cfg=ft).total_steps
        * ft.batch_size
        * 3
        * by_name["finetune"].gmacs
        / (1129 * gmacs("patchconvnet_s60", {}, 224))
        / 3600
    )
    # the largest point of the depth x width grid is L120 (paper: 52.9 GMACs at 224)
    assert by_name["depth_width@w1024-d120"].gmacs == pytest.approx(52.9, rel=0.01)
    assert by_name["depth_width@w1024-d120"].gpu_hours > 10 * by_name["depth_width@w384-d36"].gpu_hours
    grid = sum(j.gpu_hours for j in by_name.values() if j.topic == "experiments")
    total = sum(j.gpu_hours for j in by_name.values())
    assert 0 < grid < total and grid_share(list(by_name.values())) == pytest.approx(grid / total)
    assert f"{grid / total:.0%} of the total" in text

    # Counting a PatchConvNet by extrapolating from 1 and 2 blocks is exact.
    for options in ({}, {"agg_blocks": 2, "stem_stride": 16}, {"depth": 5, "embed_dim": 64}):
        direct = count_gmacs(timm.create_model("patchconvnet_demo", **options), 96)
        assert gmacs("patchconvnet_demo", options, 96) == pytest.approx(direct, rel=1e-9)

    # Without the grid: no experiment job, and its share is 0.
    raw["scales"]["paper"].setdefault("experiments", {})["enabled"] = False
    main_only = resolve({**raw, "scale": "paper"})
    assert not [j for j in jobs(main_only) if j.topic == "experiments"]
    text = dry_run(main_only)
    assert "experiment grid: skipped (experiments.enabled: false), 0% of the total" in text, text

    # DeiT's rule with the classic base: 5e-4 per 512 images -> 2e-3 at 2048.
    aug = cfg.aug.model_copy(update={"repeated_aug": 1})
    deit = params.model_copy(update={"pretrain": cfg.model_copy(update={"lr": 5e-4, "lr_base_batch": 512, "aug": aug})})
    p = plan(deit)
    assert p.lr == pytest.approx(2e-3)
    assert p.steps_per_epoch == math.ceil(1_281_167 / 16) // 128 == 625


def yaml_params() -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())


def test_sbatch_parameters_pass_account_qos_and_skip_unset():
    from pcn.train.launch import slurm_parameters

    lc = LauncherConfig(
        kind="slurm",
        tasks=3,
        slurm=SlurmConfig(account="proj", qos="high", partition="gpu"),
    )
    params = slurm_parameters(lc, "pretrain")
    assert params["additional_parameters"] == {"account": "proj", "qos": "high"}
    assert params["partition"] == "gpu" and params["ntasks_per_node"] == 3 and "gpus_per_node" not in params
    assert "constraint" not in params
    # submitit accepts them and writes them into the sbatch script.
    from submitit.slurm.slurm import _make_sbatch_string

    script = _make_sbatch_string(command="true", folder="/tmp/x", **params)
    assert "#SBATCH --account=proj" in script and "#SBATCH --qos=high" in script
    assert "--kill-on-bad-exit=1" in script


@pytest.mark.slurm
def test_cold_start_after_the_cluster_died_mid_job_leaves_no_orphan(slurm_cluster, tmp_path):
    """Daemons killed under a running job (a machine reboot, CI killing the session):
    the next start answers with an idle node and the orphan does not run again (nor does the
    node's reset, which releases a cancelled leftover stuck COMPLETING, requeue it)."""
    from conftest import _cluster

    def queue() -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
        return out.stdout.split()

    job = subprocess.run(
        ["sbatch", "--parsable", "-o", str(tmp_path / "orphan.out"), "--wrap", "sleep 67"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    deadline = time.time() + 60
    while (
        subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
        != "RUNNING"
    ):
        assert time.time() < deadline, f"job {job} never started"
        time.sleep(0.5)
    state_dir = Path(os.environ.get("PCN_SLURM_DIR", ROOT / "slurm-state"))
    for daemon in ("slurmctld", "slurmd"):
        os.kill(int((state_dir / "run" / f"{daemon}.pid").read_text()), signal.SIGKILL)
    time.sleep(1)

    started = _cluster("start")
    assert started.returncode == 0, started.stderr
    assert _cluster("status").returncode == 0
    assert job not in queue()
    # its step and the job's own process went with the dead cluster: a step left alive drains
    # the node when the controller, killed before it saved, hands the same job id out again
    assert subprocess.run(["pgrep", "-f", "sleep 67"], capture_output=True).returncode == 1
    time.sleep(3)  # a job requeued by the node's reset would be pending again by now
    assert job not in queue()


@pytest.mark.slurm
def test_stop_and_start_answer_zero_when_no_step_daemon_runs(slurm_cluster):
    """A fresh machine has no step daemon: `pgrep` then exits 1, which must not end the
    script under `set -e` (it did: a bare exit 1 with no message failed every SLURM test)."""
    from conftest import _cluster

    deadline = time.time() + 60  # steps of earlier tests' jobs may still be ending
    while subprocess.run(["pgrep", "-x", "slurmstepd"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "a step daemon still runs 60 s after the earlier tests"
        time.sleep(0.5)

    stopped = _cluster("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stderr
    assert _cluster("status").returncode == 1
    started = _cluster("start")
    assert started.returncode == 0, started.stderr
    assert "error" not in started.stderr
    assert _cluster("status").returncode == 0
