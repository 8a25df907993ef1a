"""PatchConvNet, the attention-pooling head and the ResNets that use it.

Every registered ``patchconvnet*`` name is tested (parametrized over timm's registry).
Large sizes are built at reduced depth (``depth=2``) or on the 'meta' device, so the file
runs in well under a minute on two cores.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
import timm
import torch

import pcn.models  # noqa: F401  (registers the models)
from pcn.models import CheckpointError, PatchConvNet, load_checkpoint

DATA = Path(__file__).parent / "data"
MODEL_NAMES = timm.list_models("patchconvnet*")
RELEASED_URLS = {
    "patchconvnet_s60": "https://dl.fbaipublicfiles.com/deit/s60_224_1k.pth",
    "patchconvnet_s120": "https://dl.fbaipublicfiles.com/deit/s120_224_1k.pth",
    "patchconvnet_b60": "https://dl.fbaipublicfiles.com/deit/b60_224_1k.pth",
    "patchconvnet_b120": "https://dl.fbaipublicfiles.com/deit/b120_224_1k.pth",
    "patchconvnet_s60_multi": "https://dl.fbaipublicfiles.com/deit/s60_multi_finetune_1k.pth",
}

torch.set_flush_denormal(True)


def _small(name: str, **kwargs) -> PatchConvNet:
    """The registered entrypoint with its width, at depth 2 (demo sizes as registered)."""
    if "demo" not in name:
        kwargs.setdefault("depth", 2)
        kwargs.setdefault("num_classes", 7)
    return timm.create_model(name, **kwargs)


def _read_listing(path: Path) -> tuple[dict[str, tuple[int, ...]], int, int]:
    """Expand a released state_dict listing: blocks.0 -> blocks.0..N-1, head.0 -> head.0..K-1."""
    text = path.read_text()
    n_tensors = int(re.search(r"# (\d+) tensors", text).group(1))
    n_params = int(re.search(r"total parameters: (\d+)", text).group(1))
    depth = int(re.search(r"blocks\.0 \.\. blocks\.(\d+)", text).group(1)) + 1
    heads = re.search(r"head\.0 \.\. head\.(\d+)", text)
    n_heads = int(heads.group(1)) + 1 if heads else 0
    keys = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split("\t")
        shape = tuple(int(s) for s in re.findall(r"\d+", shape))
        if key.startswith("blocks.0."):
            for i in range(depth):
                keys[f"blocks.{i}." + key[len("blocks.0.") :]] = shape
        elif n_heads and key.startswith("head.0."):
            for i in range(n_heads):
                keys[f"head.{i}." + key[len("head.0.") :]] = shape
        else:
            keys[key] = shape
    return keys, n_tensors, n_params


# --- registry -------------------------------------------------------------------------------


def test_registered_names():
    expected = {
        "patchconvnet_s60",
        "patchconvnet_s120",
        "patchconvnet_b60",
        "patchconvnet_b120",
        "patchconvnet_l60",
        "patchconvnet_l120",
        "patchconvnet_s60_multi",
        "patchconvnet_demo",
        "patchconvnet_demo_multi",
    }
    assert expected <= set(MODEL_NAMES)
    assert {"resnet50_attnpool", "resnet_demo", "resnet_demo_attnpool"} <= set(timm.list_models("resnet*"))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_pretrained_cfg(name):
    cfgs = timm.models.get_pretrained_cfg(name)
    assert cfgs.url == RELEASED_URLS.get(name, "")
    assert cfgs.first_conv == "patch_embed.proj.0.0" and cfgs.classifier == "head"
    if name in RELEASED_URLS and not name.endswith("_multi"):
        assert f"{name}.fb_in1k" in timm.list_pretrained(f"{name}*")


def test_the_two_released_multi_class_files_are_two_pretrained_tags():
    """The release has s60_multi_scratch_1k.pth (81.1) and s60_multi_finetune_1k.pth (82.0), nothing else."""
    base = "https://dl.fbaipublicfiles.com/deit/"
    tags = timm.list_pretrained("patchconvnet_s60_multi*")
    assert tags == ["patchconvnet_s60_multi.fb_in1k_finetune", "patchconvnet_s60_multi.fb_in1k_scratch"]
    urls = {tag: timm.models.get_pretrained_cfg(tag).url for tag in tags}
    assert urls == {
        "patchconvnet_s60_multi.fb_in1k_finetune": base + "s60_multi_finetune_1k.pth",
        "patchconvnet_s60_multi.fb_in1k_scratch": base + "s60_multi_scratch_1k.pth",
    }
    assert not any(
        "s60_224_multi" in cfg.url for cfg in map(timm.models.get_pretrained_cfg, timm.list_pretrained("patchconvnet*"))
    )


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward(name):
    torch.manual_seed(0)
    model = _small(name)
    size = model.pretrained_cfg["input_size"][-1] if "demo" in name else 64
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, model.num_classes)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.no_weight_decay() == {"cls_token"}
    assert "blocks" in model.group_matcher() and "stem" in model.group_matcher()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_attention(name):
    model = _small(name).eval()
    size = 64
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        logits, attn = model.forward_attention(x)
        ref = model(x)  # scaled_dot_product_attention path
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)
    h = size // model.patch_embed.stride
    if model.multiclass:
        assert attn.shape == (2, model.num_classes, h, h)
        torch.testing.assert_close(attn.sum((-2, -1)), torch.ones(2, model.num_classes))
    else:
        assert attn.shape == (2, h, h)
        s = attn.sum((-2, -1))
        assert torch.all(s > 0) and torch.all(s < 1)  # 1 minus the class token's weight on itself


def test_single_token_map_is_softmax_minus_cls_weight():
    model = _small("patchconvnet_demo").eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        _, maps = model.forward_attention(x)
        grid = model._trunk(x)
        tokens = grid.flatten(1, 2)
        blk = model.blocks_token_only[-1]
        u = blk.norm1(torch.cat((model.cls_token.expand(3, -1, -1), tokens), 1))
        _, full = blk.attn(u[:, :1], u, return_attn=True)
    cls_weight = full.mean(1)[:, 0, 0]
    torch.testing.assert_close(maps.sum((1, 2)), 1 - cls_weight)


def test_forward_head_pre_logits_and_reset():
    model = _small("patchconvnet_s60")
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 1 + 4, 384)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 384)
    model.reset_classifier(5)
    assert model(x).shape == (2, 5)
    multi = _small("patchconvnet_s60_multi")
    multi.reset_classifier(3)
    assert multi.cls_token.shape == (1, 3, 384) and len(multi.head) == 3
    assert multi(x).shape == (2, 3)


def test_avg_pool_has_no_attention_map():
    model = _small("patchconvnet_demo", pool="avg")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(RuntimeError, match="pool='attention'"):
        model.forward_attention(torch.randn(1, 3, 32, 32))


# --- exact released architecture ------------------------------------------------------------


@pytest.mark.parametrize(
    "name, listing",
    [
        ("patchconvnet_s60", "patchconvnet_s60_state_dict.tsv"),
        ("patchconvnet_s60_multi", "patchconvnet_s60_multi_state_dict.tsv"),
    ],
)
def test_state_dict_matches_release(name, listing):
    expected, n_tensors, n_params = _read_listing(DATA / listing)
    assert len(expected) == n_tensors
    with torch.device("meta"):
        model = timm.create_model(name)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == n_params


# --- checkpoints ----------------------------------------------------------------------------


@pytest.fixture()
def demo_ckpt(tmp_path):
    torch.manual_seed(1)
    model = timm.create_model("patchconvnet_demo").eval()
    path = tmp_path / "demo.pth"
    torch.save({"model": model.state_dict()}, path)
    return model, path


def test_checkpoint_roundtrip(demo_ckpt):
    src, path = demo_ckpt
    x = torch.randn(2, 3, 64, 64)
    dst = load_checkpoint(timm.create_model("patchconvnet_demo"), path, strict=True).eval()
    via_timm = timm.create_model(
        "patchconvnet_demo", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    ).eval()
    with torch.no_grad():
        ref = src(x)
        assert torch.equal(dst(x), ref)
        assert torch.equal(via_timm(x), ref)


def test_checkpoint_finetune_other_classes(demo_ckpt):
    src, path = demo_ckpt
    model = timm.create_model(
        "patchconvnet_demo", num_classes=4, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    assert torch.equal(model.blocks[0].gamma_1, src.blocks[0].gamma_1)


def test_checkpoint_truncated(demo_ckpt, tmp_path):
    _, path = demo_ckpt
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        load_checkpoint(timm.create_model("patchconvnet_demo"), bad)


@pytest.mark.parametrize(
    "damage, pattern",
    [
        ("missing", r"missing key 'blocks\.3\.attn\.qkv_pos\.2\.weight'"),
        ("unexpected", r"unexpected key 'blocks\.99\.gamma_1'"),
        ("shape", r"wrong shape for key 'norm\.weight': checkpoint has \(95,\), model expects \(96,\)"),
    ],
)
def test_checkpoint_mismatch_names_file_and_key(demo_ckpt, tmp_path, damage, pattern):
    src, _ = demo_ckpt
    sd = src.state_dict()
    if damage == "missing":
        del sd["blocks.3.attn.qkv_pos.2.weight"]
    elif damage == "unexpected":
        sd["blocks.99.gamma_1"] = torch.zeros(96)
    else:
        sd["norm.weight"] = torch.zeros(95)
    path = tmp_path / f"{damage}.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(CheckpointError, match=pattern) as err:
        load_checkpoint(timm.create_model("patchconvnet_demo"), path)
    assert str(path) in str(err.value)
    with pytest.raises(CheckpointError, match=pattern) as err:  # same check through timm's loader
        timm.create_model("patchconvnet_demo", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert str(path) in str(err.value)
    assert isinstance(err.value, ValueError)


def test_pretrained_without_release_is_an_error():
    with pytest.raises(ValueError, match="no released weights"):
        timm.create_model("patchconvnet_l60", pretrained=True)


# --- ablations ------------------------------------------------------------------------------

_ABLATIONS = list(itertools.product(["layer", "batch"], ["conv", "linear"], ["attention", "avg"], [False, True]))


@pytest.mark.parametrize("norm, stem, pool, multiclass", _ABLATIONS)
def test_ablation_options_build_and_backprop(norm, stem, pool, multiclass):
    i = _ABLATIONS.index((norm, stem, pool, multiclass))
    torch.manual_seed(i)
    model = PatchConvNet(
        num_classes=5,
        embed_dim=32,
        depth=2,
        norm=norm,
        stem=stem,
        pool=pool,
        multiclass=multiclass,
        se=bool(i % 2),
        stem_stride=(8, 16)[i % 3 == 0],
        agg_blocks=1 + i % 3,
        agg_heads=(1, 2, 4)[i % 3],
        layerscale_init=(1e-6, 1e-4, 0.1)[i % 3],
        drop_path_rate=0.1 * (i % 2),
        mlp_ratio=(3, 4)[i % 2],
    )
    model.train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 5)
    out.logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if pool == "attention":
        model.eval()
        with torch.no_grad():
            logits, attn = model.forward_attention(x)
            torch.testing.assert_close(logits, model(x), rtol=1e-4, atol=1e-5)
        h = 32 // model.patch_embed.stride
        assert attn.shape == ((2, 5, h, h) if multiclass else (2, h, h))


def test_ablation_modules_are_what_they_say():
    lin = PatchConvNet(num_classes=3, embed_dim=32, depth=1, stem="linear")
    assert isinstance(lin.patch_embed.proj, torch.nn.Conv2d)
    assert lin.patch_embed.proj.kernel_size == (16, 16) and lin.patch_embed.proj.stride == (16, 16)
    bn = PatchConvNet(num_classes=3, embed_dim=32, depth=1, norm="batch", se=False)
    assert isinstance(bn.blocks[0].norm1, torch.nn.BatchNorm2d)
    assert isinstance(bn.blocks[0].attn.qkv_pos[4], torch.nn.Identity)
    avg = PatchConvNet(num_classes=3, embed_dim=32, depth=1, pool="avg")
    assert avg.cls_token is None and avg.blocks_token_only is None
    two = PatchConvNet(num_classes=3, embed_dim=32, depth=1, agg_blocks=2, agg_heads=4)
    assert len(two.blocks_token_only) == 2 and two.blocks_token_only[0].attn.num_heads == 4
    s8 = PatchConvNet(num_classes=3, embed_dim=32, depth=1, stem_stride=8)
    assert s8.patch_embed.proj[6][0].stride == (1, 1)
    with pytest.raises(ValueError, match="norm"):
        PatchConvNet(norm="group")


@pytest.mark.parametrize("se", [True, False])
def test_trunk_block_matmul_path_equals_its_modules(se):
    """The block computes its 1x1 convolutions (and the SE's) as matmuls on the (B, H, W, C)
    grid; the result and the gradients must be those of the released NCHW module chain."""
    torch.manual_seed(0)
    block = PatchConvNet(num_classes=3, embed_dim=32, depth=1, se=se, layerscale_init=0.5).blocks[0]
    x = torch.randn(2, 5, 5, 32, requires_grad=True)
    fast = block(x)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), x)
    conv_in, act1, conv_dw, act2, se_mod, conv_out = block.attn.qkv_pos
    y = act2(conv_dw(act1(conv_in(block.norm1(x).permute(0, 3, 1, 2)))))
    if se:  # the released SE: 1x1 convolutions on the pooled 1x1 map
        s = se_mod.conv_expand(se_mod.act(se_mod.conv_reduce(y.mean((2, 3), keepdim=True))))
        y = y * s.sigmoid()
    slow = x + block.gamma_1 * conv_out(y).permute(0, 2, 3, 1)
    (g_slow,) = torch.autograd.grad(slow.square().sum(), x)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-4, atol=1e-4)


# --- dense features -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["patchconvnet_demo", "patchconvnet_s60"])
@pytest.mark.parametrize("size", [64, 96])
def test_forward_intermediates(name, size):
    model = _small(name).eval()
    stride = model.feature_info[0]["reduction"]
    assert stride == (8 if "demo" in name else 16)
    c = model.embed_dim
    x = torch.randn(2, 3, size, size)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert len(feats) == len(model.blocks)
    assert all(f.shape == (2, c, size // stride, size // stride) for f in feats)
    final, last = model.forward_intermediates(x, indices=1, norm=True)
    assert len(last) == 1 and last[0].shape == (2, c, size // stride, size // stride)
    assert final.shape == (2, 1 + (size // stride) ** 2, c)
    nlc = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(nlc[0], feats[0].flatten(2).transpose(1, 2))


def test_features_only():
    model = timm.create_model("patchconvnet_demo", features_only=True, out_indices=(1, 3))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape for f in feats] == [(1, 96, 8, 8)] * 2


# --- attention pooling on a ResNet ----------------------------------------------------------


def test_resnet_attnpool_differs_only_in_head():
    torch.manual_seed(0)
    avg = timm.create_model("resnet_demo").eval()
    att = timm.create_model("resnet_demo_attnpool").eval()
    sd_avg = {k: v for k, v in avg.state_dict().items() if not k.startswith("fc.")}
    sd_att = {k: v for k, v in att.state_dict().items() if not k.startswith("head.")}
    assert {k: v.shape for k, v in sd_avg.items()} == {k: v.shape for k, v in sd_att.items()}
    assert {k for k in avg.state_dict() if k.startswith("fc.")} == {"fc.weight", "fc.bias"}
    att.load_state_dict(sd_avg, strict=False)  # same trunk weights
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(att.forward_features(x), avg.forward_features(x))
        logits, maps = att.forward_attention(x)
        torch.testing.assert_close(logits, att(x), rtol=1e-4, atol=1e-5)
    assert logits.shape == (2, 10) and maps.shape == (2, 4, 4)  # output stride 16 at 64 px
    s = maps.sum((1, 2))
    assert torch.all(s > 0) and torch.all(s < 1)
    att.train()
    att(x).sum().backward()
    assert att.head.block.attn.k.weight.grad is not None


@pytest.mark.parametrize(
    "name", ["patchconvnet_demo", "patchconvnet_demo_multi", "resnet_demo", "resnet_demo_attnpool", "resnet50"]
)
def test_grid_passes_layerscale_init_to_exactly_the_models_that_have_it(name):
    """The experiment grid hands its ``layerscale_init`` to a model when
    ``has_layerscale`` says so: the model must then take it (and use it), and a model
    it skips must have no such option."""
    from pcn.config import has_layerscale

    if has_layerscale(name):
        model = timm.create_model(name, layerscale_init=0.1)
        gammas = [v for k, v in model.state_dict().items() if "gamma" in k]
        assert gammas and all(torch.allclose(g, torch.full_like(g, 0.1)) for g in gammas)
    else:
        with pytest.raises(TypeError, match="layerscale_init"):
            timm.create_model(name, layerscale_init=0.1)


def test_grid_model_options_reach_every_patchconvnet_of_the_grid_and_no_resnet():
    """``experiments.model_options`` (the grid's 16x16 patches) apply to the variants, the
    multi-class pair and the depth x width points, under each run's own options; the
    ResNet pair gets neither them nor the pipeline's ``model.options``."""
    from pcn.config import Params, grid_model

    p = Params.model_validate(
        {
            "model": {"name": "patchconvnet_demo", "options": {"drop_rate": 0.1}},
            "experiments": {"model_options": {"stem_stride": 16}},
        }
    )
    assert grid_model(p, None, {"pool": "avg"}) == (
        "patchconvnet_demo",
        {"drop_rate": 0.1, "stem_stride": 16, "pool": "avg"},
    )
    assert grid_model(p, None, {"stem_stride": 8}) == ("patchconvnet_demo", {"drop_rate": 0.1, "stem_stride": 8})
    assert grid_model(p, "patchconvnet_demo_multi", {}) == ("patchconvnet_demo_multi", {"stem_stride": 16})
    assert grid_model(p, "resnet_demo_attnpool", {}) == ("resnet_demo_attnpool", {})
    name, options = grid_model(p, "patchconvnet_demo_multi", {})
    assert timm.create_model(name, num_classes=3, **options).patch_embed.stride == 16


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "not a PyTorch checkpoint (unknown format)"),
        ("empty", "not a PyTorch checkpoint (empty file)"),
        ("truncated", "truncated"),
        ("legacy_truncated", "truncated"),
        ("code", "refused: contains code (argparse.Namespace)"),
    ],
)
def test_unreadable_checkpoints_are_named_in_one_line(tmp_path, kind, message):
    """Every way a .pth can be bad gets its own one-line reason, not torch's paragraphs."""
    import argparse

    from pcn.models.checkpoint import read_checkpoint
    from pcn.train import checkpoint as ckpt

    path = tmp_path / f"{kind}.pth"
    good = {"model": {"w": torch.zeros(4)}}
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save(good, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "legacy_truncated":
        torch.save(good, path, _use_new_zipfile_serialization=False)
        path.write_bytes(path.read_bytes()[:100])
    else:  # deit's main.py pickles its argparse Namespace into checkpoints
        torch.save({**good, "args": argparse.Namespace(lr=1e-3)}, path)
    for load in (read_checkpoint, ckpt.load):  # released files and the training's resume state alike
        with pytest.raises(CheckpointError) as err:
            load(path)
        assert str(err.value) == f"{path}: {message}" or str(err.value).startswith(f"{path}: {message}")
        assert "\n" not in str(err.value)


# --- the depth x width grid's LayerScale ------------------------------------------------------


def _gammas(model: PatchConvNet) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for n, p in model.named_parameters() if ".gamma_" in n])


def test_grid_points_start_from_the_layerscale_of_their_nearest_released_model(tmp_path):
    """At paper scale (layerscale_init: null) each point is built as its stage builds it and
    starts from the released model of its shape, or the nearest one (S60 1e-4, the rest 1e-6)."""
    from pcn.config import grid_model, load_params
    from pcn.models.family import depth_width_options
    from pcn.train.engine import build_model
    from pcn.train.job import DataSpec, TrainJob

    root = Path(__file__).resolve().parents[1]
    p = load_params(root / "params.yaml", scale="paper")
    train = p.experiments.train_for("depth_width")
    assert train.layerscale_init is None
    nearest = {
        (384, 36): "patchconvnet_s60",
        (384, 60): "patchconvnet_s60",
        (384, 120): "patchconvnet_s120",
        (768, 36): "patchconvnet_b60",
        (768, 60): "patchconvnet_b60",
        (768, 120): "patchconvnet_b120",
        (1024, 36): "patchconvnet_l60",
        (1024, 60): "patchconvnet_l60",
        (1024, 120): "patchconvnet_l120",
    }
    assert {tuple(point) for point in p.experiments.depth_width} == set(nearest)
    for width, depth in p.experiments.depth_width:
        name, options = grid_model(p, None, depth_width_options(width, depth))
        # the point's own constructor at 2 blocks (the init does not depend on depth)
        job = TrainJob(
            model=name,
            num_classes=10,
            train=train,
            data=DataSpec(),
            out_dir=str(tmp_path),
            model_options={**options, "depth": 2},
        )
        model = build_model(job)
        released = timm.create_model(nearest[width, depth], depth=2, num_classes=10)
        assert model.embed_dim == width
        init = _gammas(released).unique()
        assert init.numel() == 1 and torch.equal(_gammas(model).unique(), init), (width, depth)
        # the rehearsal's w1024-d60 (L60's shape) started from S60's 1e-4
        assert init.item() == pytest.approx(1e-4 if nearest[width, depth] == "patchconvnet_s60" else 1e-6)
    # a recipe that sets the init (the demo's 0.1) still wins over the point's
    job = TrainJob(
        model="patchconvnet_s60",
        num_classes=10,
        train=train.model_copy(update={"layerscale_init": 0.1}),
        data=DataSpec(),
        out_dir=str(tmp_path),
        model_options={**depth_width_options(1024, 60), "depth": 2},
    )
    assert torch.allclose(_gammas(build_model(job)), torch.tensor(0.1))


def test_the_nearest_released_model_rule():
    from pcn.models.family import FAMILY, nearest_released

    for name, (width, depth, _) in FAMILY.items():
        assert nearest_released(width, depth) == name  # a released shape is its own model
    assert nearest_released(64, 4) == "patchconvnet_s60"  # the demo grid: S60's 1e-4
    assert nearest_released(850, 90) == "patchconvnet_b120"  # 850/768 < 1024/850; 90/60 > 120/90
    assert nearest_released(2048, 200) == "patchconvnet_l120"
    # the bounds params.yaml states: S60 up to width 543 and depth 84 (geometric means)
    assert nearest_released(543, 84) == "patchconvnet_s60"
    assert nearest_released(544, 84) == "patchconvnet_b60" and nearest_released(543, 85) == "patchconvnet_s120"
