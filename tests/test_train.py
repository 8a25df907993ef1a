"""The training engine on a tiny image folder: learning, determinism, exact resume,
atomic checkpoints, fine-tuning init, the schedule and the metrics file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pcn.config import AugConfig, TrainConfig, batch_per_rank
from pcn.train import checkpoint as ckpt
from pcn.train import engine
from pcn.train.job import DataSpec, TrainJob
from pcn.train.parts import build_parts

TINY_MODEL = "patchconvnet_demo"
TINY_OPTIONS = {"embed_dim": 32, "depth": 2}
TIMING_KEYS = {"epoch_time_s", "images_per_s", "train_time_s"}


def make_job(root: Path, out: Path, **train) -> TrainJob:
    cfg = {
        "img_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "lr": 2e-3,
        "warmup_epochs": 0.5,
        "min_lr": 1e-5,
        "checkpoint_every_steps": 4,
        "aug": AugConfig(label_smoothing=0.1),
    }
    cfg.update(train)
    return TrainJob(
        model=TINY_MODEL,
        model_options=dict(TINY_OPTIONS),
        num_classes=3,
        train=TrainConfig(**cfg),
        data=DataSpec(
            train_folder=str(root / "train"),
            val_folder=str(root / "val"),
            loader="torch",
            num_workers=0,
        ),
        out_dir=str(out),
        metrics_path=str(out / "metrics.json"),
        seed=0,
        threads=1,
        device="cpu",
    )


def weights(out: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(out / "model.pth")["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    diff = {k: (wa[k].float() - wb[k].float()).abs().max().item() for k in wa if not torch.equal(wa[k], wb[k])}
    assert not diff, f"weights differ: {diff}"


def comparable(result: dict) -> dict:
    """A result without wall-clock numbers."""
    out = {k: v for k, v in result.items() if k not in TIMING_KEYS}
    out["history"] = [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in result["history"]]
    return out


# The full parts with every random piece switched on: mixup/cutmix (numpy RNG),
# drop-path (torch RNG), EMA and clipping.
FULL_RECIPE = {
    "aug": AugConfig(mixup=0.8, cutmix=1.0, label_smoothing=0.1),
    "drop_path": 0.1,
    "ema_decay": 0.9,
    "clip_grad": 1.0,
    "epochs": 3,
}


@pytest.fixture(scope="module")
def reference(tiny_imagefolder, tmp_path_factory):
    """One uninterrupted run with the full parts; the resume tests must reproduce it exactly."""
    out = tmp_path_factory.mktemp("reference")
    result = engine.run(make_job(tiny_imagefolder, out, **FULL_RECIPE))
    return out, result


def test_loss_decreases_and_metrics_file(tiny_imagefolder, tmp_path):
    job = make_job(
        tiny_imagefolder,
        tmp_path,
        epochs=4,
        lr=3e-3,
        aug=AugConfig(label_smoothing=0.0),
    )
    result = engine.run(job)
    losses = [e["train_loss"] for e in result["history"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result["loss"] < math.log(3), result  # better than chance on the validation images

    saved = json.loads(Path(job.metrics_path).read_text())
    assert saved["status"] == "finished" and saved["epochs"] == 4 and saved["global_step"] == 4 * 6
    assert saved["val_images"] == 12 and saved["world_size"] == 1 and saved["steps_per_epoch"] == 6
    for key in ("top1", "top5", "loss"):
        assert isinstance(saved[key], float)
    assert 0.0 <= saved["top1"] <= saved["top5"] <= 100.0
    assert [e["epoch"] for e in saved["history"]] == [1, 2, 3, 4]
    for entry in saved["history"]:
        assert {
            "epoch",
            "step",
            "train_loss",
            "lr",
            "epoch_time_s",
            "images_per_s",
            "val_top1",
            "val_top5",
            "val_loss",
        } <= entry.keys()
    # Released-checkpoint format; every file loads with weights_only=True.
    final = torch.load(tmp_path / "model.pth", weights_only=True)
    assert list(final) == ["model"]
    resume = torch.load(tmp_path / "last.pth", weights_only=True)
    assert resume["global_step"] == 24 and resume["epoch"] == 4
    assert not list(tmp_path.glob(".*.tmp")), "temporary checkpoint files left behind"


def test_eval_every_skips_epochs_but_always_evaluates_last(tiny_imagefolder, tmp_path):
    result = engine.run(make_job(tiny_imagefolder, tmp_path, epochs=3, eval_every=2, max_steps=None))
    evaluated = [e["epoch"] for e in result["history"] if "val_top1" in e]
    assert evaluated == [2, 3]


def test_same_seed_same_weights(tiny_imagefolder, tmp_path, reference):
    ref_out, ref_result = reference
    result = engine.run(make_job(tiny_imagefolder, tmp_path, **FULL_RECIPE))
    assert_same_weights(ref_out, tmp_path)
    assert (ref_out / "model_ema.pth").exists()
    assert comparable(result) == comparable(ref_result)


def test_resume_after_max_steps_is_exact(tiny_imagefolder, tmp_path, reference):
    ref_out, ref_result = reference
    first = engine.run(make_job(tiny_imagefolder, tmp_path, max_steps=7, **FULL_RECIPE))  # mid-epoch 2
    assert first["global_step"] == 7
    result = engine.run(make_job(tiny_imagefolder, tmp_path, **FULL_RECIPE))
    assert result["global_step"] == ref_result["global_step"] == 18
    assert_same_weights(ref_out, tmp_path)
    ema_ref, ema = (ckpt.load(p / "model_ema.pth")["model"] for p in (ref_out, tmp_path))
    assert all(torch.equal(ema_ref[k], ema[k]) for k in ema_ref)
    assert comparable(result) == comparable(ref_result)


def test_resume_after_crash_uses_periodic_checkpoint(tiny_imagefolder, tmp_path, reference):
    ref_out, _ = reference
    calls = {"n": 0}

    def crash_at_step_10() -> bool:
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("injected crash")
        return False

    with pytest.raises(RuntimeError, match="injected crash"):
        engine.run(make_job(tiny_imagefolder, tmp_path, **FULL_RECIPE), stop=crash_at_step_10)
    assert ckpt.load(tmp_path / "last.pth")["global_step"] == 8  # checkpoint_every_steps=4
    engine.run(make_job(tiny_imagefolder, tmp_path, **FULL_RECIPE))
    assert_same_weights(ref_out, tmp_path)


def test_stop_request_saves_and_resumes_exactly(tiny_imagefolder, tmp_path, reference):
    ref_out, ref_result = reference
    calls = {"n": 0}

    def stop_after_step_5() -> bool:
        calls["n"] += 1
        return calls["n"] >= 5

    first = engine.run(make_job(tiny_imagefolder, tmp_path, **FULL_RECIPE), stop=stop_after_step_5)
    assert first == {"status": "interrupted", "global_step": 5}
    assert not (tmp_path / "model.pth").exists()
    assert ckpt.load(tmp_path / "last.pth")["global_step"] == 5
    result = engine.run(make_job(tiny_imagefolder, tmp_path, **FULL_RECIPE))
    assert_same_weights(ref_out, tmp_path)
    assert comparable(result) == comparable(ref_result)


def test_resume_ignores_the_state_of_a_different_config(tiny_imagefolder, tmp_path):
    engine.run(make_job(tiny_imagefolder, tmp_path / "a", max_steps=2))
    (tmp_path / "b").mkdir()
    os.replace(tmp_path / "a" / "last.pth", tmp_path / "b" / "last.pth")
    with pytest.warns(UserWarning, match="different training configuration"):
        result = engine.run(make_job(tiny_imagefolder, tmp_path / "b", lr=1e-3))
    assert (tmp_path / "b" / "last.stale.pth").exists(), "the other run's state is kept aside, not deleted"
    fresh = engine.run(make_job(tiny_imagefolder, tmp_path / "c", lr=1e-3))
    assert comparable(result) == comparable(fresh), "it starts from scratch, as if no state was there"


def _toy_loop(path: Path, stop=lambda: False):
    """The shared loop on a toy task whose every step draws from the torch and numpy RNGs
    (noise on the batch, dropout), with an EMA as extra module and a per-epoch history."""
    import copy

    from timm.scheduler import CosineLRScheduler

    from pcn.train.loop import Loop

    ckpt.seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 2))
    ema = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = CosineLRScheduler(optimizer, t_initial=10, warmup_t=3, warmup_lr_init=1e-4, t_in_epochs=False)
    data = torch.randn(20, 4)
    labels = (data[:, 0] > 0).long()

    def batches(epoch: int, start: int):
        order = torch.randperm(20, generator=torch.Generator().manual_seed(epoch))
        for i in range(start, 5):
            idx = order[4 * i : 4 * i + 4]
            yield data[idx] + 0.1 * torch.randn(4, 4) + float(np.random.rand()), labels[idx]

    def ema_update():
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters()):
                e.lerp_(p, 0.2)

    def on_epoch(state):
        state.history.append({"epoch": state.epoch, "loss": sum(state.epoch_losses(5)) / 5})

    loop = Loop(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        loss=lambda b: torch.nn.functional.cross_entropy(model(b[0]), b[1]),
        steps_per_epoch=5,
        path=path,
        fingerprint="toy",
        seed=0,
        epochs=2,
        checkpoint_every=3,
        extras={"ema": ema},
        after_step=ema_update,
        on_epoch=on_epoch,
        stop=stop,
    )
    return loop, [model, ema]


def _toy_run(path: Path, stop=lambda: False):
    loop, modules = _toy_loop(path, stop)
    state = loop.restore()
    return loop.run(state), state, [m.state_dict() for m in modules]


def test_shared_loop_resumes_exactly_after_a_crash_or_a_stop(tmp_path):
    """The one resume scheme (classification and transfer train through it): a crash resumes
    from the last periodic state, a stop request saves at once; either way the resumed run is
    the uninterrupted one, step for step."""
    outcome, ref, ref_weights = _toy_run(tmp_path / "ref" / "last.pth")
    assert outcome == "finished" and ref.global_step == 10 and len(ref.losses) == 10 and len(ref.history) == 2

    def same_as_ref(state, weights):
        assert state.losses == ref.losses and state.history == ref.history
        for got, want in zip(weights, ref_weights):  # the model and the EMA
            assert all(torch.equal(got[k], want[k]) for k in want)

    calls = {"n": 0}

    def crash_at_step_8():
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("injected crash")
        return False

    path = tmp_path / "crash" / "last.pth"
    with pytest.raises(RuntimeError, match="injected crash"):
        _toy_run(path, crash_at_step_8)
    assert ckpt.load(path)["global_step"] == 6  # checkpoint_every=3
    outcome, state, weights = _toy_run(path)
    assert outcome == "finished"
    same_as_ref(state, weights)

    calls["n"] = 0
    path = tmp_path / "stop" / "last.pth"
    outcome, state, _ = _toy_run(path, lambda: calls.__setitem__("n", calls["n"] + 1) or calls["n"] == 5)
    assert outcome == "interrupted" and state.global_step == 5 and state.history == []  # the epoch's last step
    saved = ckpt.load(path)
    assert (saved["global_step"], saved["epoch"], saved["step_in_epoch"]) == (5, 0, 5)
    outcome, state, weights = _toy_run(path)
    same_as_ref(state, weights)


def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    good = {"step": 1, "w": torch.arange(4.0)}
    ckpt.save(good, path)

    class Boom(Exception):
        pass

    real_save = torch.save

    def half_written(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        f.truncate(10)  # a torn file ...
        raise Boom("killed while writing")  # ... and the writer dies before the rename

    monkeypatch.setattr(torch, "save", half_written)
    with pytest.raises(Boom):
        ckpt.save({"step": 2, "w": torch.zeros(4)}, path)
    monkeypatch.undo()
    loaded = ckpt.load(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], good["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]

    # A crash between the write and the rename leaves the old file too.
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ckpt.save({"step": 3, "w": torch.ones(4)}, path)
    monkeypatch.undo()
    assert ckpt.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_rng_state_roundtrips_through_weights_only(tmp_path):
    import random

    import numpy as np

    state = ckpt.rng_state()
    ckpt.save({"rng": state}, tmp_path / "r.pth")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.set_rng_state(ckpt.load(tmp_path / "r.pth")["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], got[0]) and (expected[1] == got[1]).all() and expected[2] == got[2]


def test_finetune_from_checkpoint_new_head_higher_resolution(tiny_imagefolder, tmp_path):
    import timm

    import pcn.models  # noqa: F401  (registers the models)
    from pcn.models import CheckpointError

    pre = tmp_path / "pre"
    engine.run(make_job(tiny_imagefolder, pre, max_steps=3))
    source = weights(pre)

    # Same classes: every tensor loads.
    job = make_job(tiny_imagefolder, tmp_path / "ft")
    model = engine.build_model(job)
    assert engine.load_init(model, str(pre / "model.pth")) == []
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())

    # Other class count: only the classifier is new.
    job.num_classes = 5
    model = engine.build_model(job)
    dropped = engine.load_init(model, str(pre / "model.pth"))
    assert dropped == ["head.weight", "head.bias"]
    own = model.state_dict()
    assert all(torch.equal(own[k], source[k]) for k in own if not k.startswith("head."))

    # Anything else that does not fit is an error, not a silent partial load.
    other = timm.create_model(TINY_MODEL, num_classes=3, embed_dim=48, depth=2)
    with pytest.raises(CheckpointError):
        engine.load_init(other, str(pre / "model.pth"))

    # Fine-tuning at a higher resolution just runs (no position embedding to resize).
    ft = make_job(
        tiny_imagefolder,
        tmp_path / "ft",
        img_size=40,
        epochs=1,
        lr=5e-4,
        warmup_epochs=0.0,
    )
    ft.init_checkpoint = str(pre / "model.pth")
    result = engine.run(ft)
    assert result["status"] == "finished" and result["epochs"] == 1


def test_schedule_scaling_and_weight_decay_groups(tiny_imagefolder, tmp_path):
    cfg = TrainConfig(
        epochs=4,
        batch_size=64,
        lr=5e-4,
        lr_base_batch=32,
        warmup_epochs=1.0,
        min_lr=1e-5,
        weight_decay=0.05,
    )
    job = make_job(tiny_imagefolder, tmp_path)
    model = engine.build_model(job)
    parts = build_parts(cfg, model, steps_per_epoch=10, num_classes=3)
    peak = 5e-4 * 64 / 32
    assert parts.lr == pytest.approx(peak) and parts.total_steps == 40 and parts.warmup_steps == 10

    def expected(
        step: int,
    ) -> float:  # DeiT: linear warm-up from 1e-6, then cosine to min_lr
        if step < 10:
            return 1e-6 + step * (peak - 1e-6) / 10
        return 1e-5 + 0.5 * (peak - 1e-5) * (1 + math.cos(math.pi * (step - 10) / 30))

    for step in range(41):
        parts.scheduler.step_update(step)
        assert parts.optimizer.param_groups[0]["lr"] == pytest.approx(expected(step), rel=1e-9), step
    decays = {g["weight_decay"] for g in parts.optimizer.param_groups}
    assert decays == {0.0, 0.05}
    no_decay = {id(p) for g in parts.optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in no_decay}
    assert "cls_token" in names and all(
        n.endswith(".bias") or n == "cls_token" or model.get_parameter(n).ndim <= 1 for n in names
    )


def test_schedule_stepped_per_epoch_as_deits_main(tiny_imagefolder, tmp_path):
    """schedule_step: epoch: main.py's create_scheduler (cosine over the epochs, warm-up inside)
    and lr_scheduler.step(epoch) after each epoch: one lr per epoch, epoch e at the value of e - 1."""
    cfg = TrainConfig(epochs=4, batch_size=8, lr=1e-3, warmup_epochs=1.0, min_lr=1e-5, schedule_step="epoch")
    model = engine.build_model(make_job(tiny_imagefolder, tmp_path))
    parts = build_parts(cfg, model, steps_per_epoch=10, num_classes=3)

    def schedule(t: int) -> float:  # timm's CosineLRScheduler(t_initial=4, warmup_t=1) at epoch t
        return 1e-6 + t * (1e-3 - 1e-6) if t < 1 else 1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 4))

    lrs = [parts.optimizer.param_groups[0]["lr"]]  # before the first step: the warm-up's start
    for step in range(1, 40):
        parts.scheduler.step_update(step)
        lrs.append(parts.optimizer.param_groups[0]["lr"])
    for step, lr in enumerate(lrs):
        epoch = step // 10
        assert lr == pytest.approx(schedule(max(epoch - 1, 0)), rel=1e-9), step
    assert lrs[:20] == [pytest.approx(1e-6)] * 20  # epochs 0 and 1 both at the warm-up's start
    assert len(set(lrs[20:30])) == 1 and lrs[30] < lrs[29]  # constant within an epoch
    assert [engine.lr_at(parts, n) for n in (10, 25, 39)] == pytest.approx([lrs[10], lrs[25], lrs[39]])


def _collapse_onto_class_token(model) -> None:
    """Make the class token's query match its own key far better than any patch's key."""
    blk = model.blocks_token_only[-1]
    with torch.no_grad():
        eye = torch.eye(model.embed_dim)
        blk.attn.q.weight.copy_(4 * eye)
        blk.attn.k.weight.copy_(4 * eye)
        model.cls_token.copy_(torch.randn_like(model.cls_token))


def test_a_batch_that_leaves_mixup_an_odd_count_per_rank_is_refused_naming_the_stage():
    """timm's Mixup pairs images within a rank's batch: an odd per-rank batch would fail at
    the first step, on the cluster; refused up front instead (the engine and the dry run)."""
    mixed = TrainConfig(batch_size=6, aug=AugConfig(mixup=0.8, cutmix=1.0))
    assert mixed.aug.mixes
    assert batch_per_rank(6, 3, "pretrain", mixup=True) == 2
    with pytest.raises(ValueError, match=r"depth_width@w768-d120: batch_size = 6 over 2 ranks is 3 per rank"):
        batch_per_rank(6, 2, "depth_width@w768-d120", mixup=True)
    with pytest.raises(ValueError, match="batch_size = 6 does not split over 4 ranks"):
        batch_per_rank(6, 4, "pretrain", mixup=True)
    plain = TrainConfig(batch_size=6, aug=AugConfig(mixup=0.0, cutmix=0.0))
    assert not plain.aug.mixes
    assert batch_per_rank(6, 2, "finetune", mixup=plain.aug.mixes) == 3


def test_bce_without_mixup_or_cutmix_builds_a_recipe_with_smoothed_bce():
    """loss: bce with mixup and cutmix both off: hard labels, no Mixup, label smoothing in the BCE."""
    from timm.loss import BinaryCrossEntropy

    cfg = TrainConfig(epochs=1, batch_size=4, loss="bce", aug=AugConfig(mixup=0.0, cutmix=0.0, label_smoothing=0.1))
    model = torch.nn.Linear(4, 3)
    parts = build_parts(cfg, model, steps_per_epoch=2, num_classes=3)
    assert parts.mixup is None and isinstance(parts.loss, BinaryCrossEntropy)
    logits, labels = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]]), torch.tensor([0, 2])
    off = 0.1 / 3  # smoothing 0.1 over 3 classes: 1 - 0.1 + off on the label, off elsewhere
    targets = torch.tensor([[1 - 0.1 + off, off, off], [off, off, 1 - 0.1 + off]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert parts.loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_evaluate_reports_a_collapse_onto_the_class_token():
    import timm

    import pcn.models  # noqa: F401  (registers the models)
    from pcn.train import engine

    torch.manual_seed(0)
    model = timm.create_model("patchconvnet_demo", num_classes=3, embed_dim=32, depth=2)
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    healthy = engine.evaluate(model, [(images, labels)], torch.device("cpu"))
    assert healthy["cls_self_attention"] < 0.5  # at init: about 1 / (patches + 1)
    _collapse_onto_class_token(model)
    collapsed = engine.evaluate(model, [(images, labels)], torch.device("cpu"))
    assert collapsed["cls_self_attention"] > engine.COLLAPSED_SELF_ATTENTION
    logits = model(images)
    assert torch.allclose(logits, logits[:1].expand_as(logits), atol=1e-4)  # the image no longer matters
    state = engine.LoopState()
    with pytest.warns(UserWarning, match="no longer depends on the image"):
        engine._evaluate_into(state, model, [(images, labels)], torch.device("cpu"), type("R", (), {"ema": None})())
    multi = timm.create_model("patchconvnet_demo_multi", num_classes=3, embed_dim=32, depth=2)
    assert "cls_self_attention" not in engine.evaluate(multi, [(images, labels)], torch.device("cpu"))


def test_evaluation_shards_val_across_ranks_without_repeats():
    """Under DDP each rank scores its own stride of val: together every image once, none twice."""
    from pcn.data.order import epoch_order

    for n, world in ((50_000, 8), (13, 3), (2, 4)):
        shards = [epoch_order(n, train=False, seed=0, epoch=0, rank=r, world_size=world) for r in range(world)]
        merged = np.concatenate(shards)
        assert len(merged) == n and set(merged.tolist()) == set(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_evaluate_stops_after_max_batches():
    import timm

    import pcn.models  # noqa: F401  (registers the models)

    model = timm.create_model("patchconvnet_demo", num_classes=3, embed_dim=32, depth=2)
    batches = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))] * 5
    assert engine.evaluate(model, batches, torch.device("cpu"))["n"] == 20
    assert engine.evaluate(model, batches, torch.device("cpu"), max_batches=2)["n"] == 8


def test_one_trainer_per_results_folder(tmp_path):
    """A live trainer's folder is refused to a second one, naming the holder; once the
    holder has died (its flock goes with it) the next trainer takes over and says so."""
    import subprocess
    import sys

    from pcn.train.lock import FolderBusy, trainer_lock

    out = tmp_path / "results" / "pretrain"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from pcn.train.lock import trainer_lock\n"
                f"with trainer_lock({str(out)!r}, 'pretrain'):\n"
                "    print('held', flush=True); time.sleep(600)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            FolderBusy, match=rf"pretrain is already being trained there by job \S+ \(pid {holder.pid} "
        ):
            with trainer_lock(out, "pretrain"):
                pass
    finally:
        holder.kill()
        holder.wait()
    said = []
    with trainer_lock(out, "pretrain", echo=said.append):  # the dead job's lock is free
        pass
    assert len(said) == 1 and f"pid {holder.pid}" in said[0] and "no longer running" in said[0]
    with trainer_lock(out, "pretrain", echo=said.append):  # a clean release leaves nothing to take over
        pass
    assert len(said) == 1


def _start_training_stage(tiny_imagefolder, tmp_path):
    """A stage process that launches a long local training and waits for it; returns it once
    the job has written its first checkpoint.  Its output goes to ``stage.log`` (a file, not
    a pipe: the job's processes inherit it, and a reader would wait for them to close it)."""
    import pickle
    import subprocess
    import sys
    import time

    job = make_job(tiny_imagefolder, tmp_path / "run", epochs=500, checkpoint_every_steps=1)
    (tmp_path / "job.pkl").write_bytes(pickle.dumps(job))
    stage = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                f"import pickle, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                "from pcn.config import LauncherConfig; from pcn.train.launch import launch\n"
                f"job = pickle.loads(open({str(tmp_path / 'job.pkl')!r}, 'rb').read())\n"
                f"launch(job, LauncherConfig(kind='local'), {str(tmp_path / 'logs')!r})"
            ),
        ],
        stdout=open(tmp_path / "stage.log", "w"),
        stderr=subprocess.STDOUT,
    )
    last = tmp_path / "run" / "last.pth"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:  # the job trains and checkpoints
        time.sleep(0.5)
    assert last.exists(), "the job never checkpointed"
    return stage


def _assert_nothing_trains_on(run_dir: Path, within_s: float = 20) -> None:
    """The results folder's trainer lock comes free and its checkpoint stops changing."""
    import time

    from pcn.train.lock import FolderBusy, trainer_lock

    deadline = time.monotonic() + within_s
    while True:
        try:
            with trainer_lock(run_dir, "test"):
                break
        except FolderBusy:
            assert time.monotonic() < deadline, f"a trainer still holds {run_dir} {within_s:g} s later"
            time.sleep(0.5)
    mtime = (run_dir / "last.pth").stat().st_mtime_ns
    time.sleep(5)
    assert (run_dir / "last.pth").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_a_terminated_stage_cancels_the_job_it_submitted(tiny_imagefolder, tmp_path):
    """SIGTERM to the waiting stage (what a stopped Snakemake, DVC or `pcn run` sends) cancels
    its training job: no trainer is left writing into the results folder."""
    import signal

    stage = _start_training_stage(tiny_imagefolder, tmp_path)
    stage.send_signal(signal.SIGTERM)
    stage.wait(timeout=60)
    out = (tmp_path / "stage.log").read_text()
    assert stage.returncode != 0 and "SIGTERM: cancelling job" in out, out[-2000:]
    _assert_nothing_trains_on(tmp_path / "run")


@pytest.mark.slow
def test_a_killed_stage_takes_its_local_job_with_it(tiny_imagefolder, tmp_path):
    """SIGKILL (the OOM killer, kill -9) gives the stage no chance to cancel: the local job's
    ranks notice their stage is gone and stop, leaving the last checkpoint for the rerun."""
    stage = _start_training_stage(tiny_imagefolder, tmp_path)
    stage.kill()
    stage.wait(timeout=60)
    _assert_nothing_trains_on(tmp_path / "run")
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "logs").rglob("*.err"))
    assert "the stage that launched this job" in logs, logs[-2000:]
