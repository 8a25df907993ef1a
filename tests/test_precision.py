"""Mixed precision as the official recipe: fp16 autocast with a loss scaler (torch's GradScaler,
as DeiT's NativeScaler), bf16 without one, fp32 exact; and the optimizer's epsilon as given.
Autocast and GradScaler run on the CPU, so the paper's fp16 path is tested here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from pcn.config import TrainConfig
from pcn.train import engine
from pcn.train.loop import Loop, autocast, grad_scaler
from pcn.train.parts import build_parts

sys.path.insert(0, str(Path(__file__).parent))
from test_train import make_job


def test_the_fp16_path_trains_two_steps_to_a_finite_loss(tiny_imagefolder, tmp_path):
    # 48 images at batch 24: one epoch of two steps
    result = engine.run(make_job(tiny_imagefolder, tmp_path, precision="fp16", batch_size=24, epochs=1, max_steps=None))
    losses = [row["train_loss"] for row in result["history"]]
    assert result["global_step"] == 2 and losses and all(math.isfinite(v) for v in losses), result
    assert math.isfinite(result["history"][-1]["val_top1"])


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", None)])
def test_autocast_runs_the_forward_at_the_precision_asked_for(precision, dtype):
    layer = torch.nn.Linear(4, 4)
    with autocast(torch.device("cpu"), precision):
        out = layer(torch.randn(2, 4))
    assert out.dtype == (dtype or torch.float32)
    assert (grad_scaler(torch.device("cpu"), precision) is not None) == (precision == "fp16")


def _one_layer_loop(tmp_path: Path, scaler) -> tuple[Loop, torch.nn.Linear]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    flat = {"step_update": lambda self, n: None, "state_dict": lambda self: {}, "load_state_dict": lambda self, s: None}
    scheduler = type("Flat", (), flat)()
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(2)]

    def loss(batch):
        x, y = batch
        with autocast(torch.device("cpu"), "fp16"):
            return torch.nn.functional.cross_entropy(model(x).float(), y)

    loop = Loop(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=lambda epoch, start: data[start:],
        loss=loss,
        steps_per_epoch=2,
        path=tmp_path / "last.pth",
        fingerprint="t",
        seed=0,
        scaler=scaler,
        checkpoint_every=100,
    )
    return loop, model


def test_a_step_with_an_inf_gradient_is_skipped_and_the_scale_drops(tmp_path):
    scaler = grad_scaler(torch.device("cpu"), "fp16")
    loop, model = _one_layer_loop(tmp_path, scaler)
    calls = {"n": 0}

    def poison_first(grad):  # an fp16 overflow in the first step's backward pass
        calls["n"] += 1
        return torch.full_like(grad, float("inf")) if calls["n"] == 1 else grad

    model.weight.register_hook(poison_first)
    before = model.weight.detach().clone()
    scale = scaler.get_scale()
    state = loop.restore(resume=False)
    loop._step(state, next(iter(loop.batches(0, 0))))
    assert torch.equal(model.weight, before), "a step with inf gradients must not change the weights"
    assert scaler.get_scale() < scale, "the scaler lowers its scale after an overflow"
    loop._step(state, loop.batches(0, 1)[0])
    assert not torch.equal(model.weight, before), "the next, finite step updates the weights"
    assert torch.isfinite(model.weight).all()


def test_the_scalers_state_is_saved_and_resumed(tmp_path):
    scaler = grad_scaler(torch.device("cpu"), "fp16")
    loop, _ = _one_layer_loop(tmp_path, scaler)
    state = loop.restore(resume=False)
    loop._step(state, loop.batches(0, 0)[0])
    loop.save(state)
    again = grad_scaler(torch.device("cpu"), "fp16")
    resumed, _ = _one_layer_loop(tmp_path, again)
    resumed.restore(resume=True)
    assert again.state_dict() == scaler.state_dict()


@pytest.mark.parametrize(
    "optimizer, eps, expected", [("lamb", 1e-8, 1e-8), ("lamb", None, 1e-6), ("adamw", 1e-8, 1e-8)]
)
def test_the_optimizers_epsilon_is_the_one_given(optimizer, eps, expected):
    cfg = TrainConfig(optimizer=optimizer, opt_eps=eps)
    parts = build_parts(cfg, torch.nn.Linear(4, 2), steps_per_epoch=10, num_classes=2)
    assert {g["eps"] for g in parts.optimizer.param_groups} == {expected}
