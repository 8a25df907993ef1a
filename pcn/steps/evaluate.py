"""Evaluation stages: accuracy of the fine-tuned model, of a released checkpoint, and
complexity of the family.

``pcn evaluate --weights MODEL --metrics JSON`` is the DAG stage (the model of the stage
``evaluate.checkpoint`` names -> metrics/eval.json).
``pcn evaluate --checkpoint FILE`` scores a released PatchConvNet file (``{"model":
state_dict}``, the official format) on ImageNet val and ImageNet-v2 under the paper's
evaluation protocol and writes ``metrics/released/<model>-<img_size>-<sha>.json``, where
``<sha>`` begins the checkpoint file's SHA-256: every evaluated checkpoint keeps its own
result (two fine-tunings of one architecture are two files), and scoring the same file
again replaces its earlier result.
"""

from __future__ import annotations

from pathlib import Path

from pcn.data.splits import SPLIT_LAYOUTS, data_paths
from pcn.errors import UserError
from pcn.io import atomic_path, check_writable
from pcn.machine.device import setup_torch, torch_device
from pcn.steps.common import outputs, stage
from pcn.steps.train import num_classes

RELEASED_DIR = Path("metrics/released")
REGISTERED_DIR = Path("metrics/registered")  # models scored from the MLflow registry
ERROR_CHARS = 300  # a failed model's row keeps the error's first line, not a page of it


def evaluate(args) -> int:
    if getattr(args, "checkpoint", None):
        return evaluate_released(args)
    if (getattr(args, "model", None) or "").startswith("models:/"):
        return evaluate_registered(args)
    for flag in ("model", "img_size", "crop_ratio"):
        if getattr(args, flag, None) is not None:
            raise UserError(f"--{flag.replace('_', '-')} applies to a released checkpoint: pass --checkpoint FILE too")
    if not (args.weights and args.metrics):
        raise UserError("--weights MODEL and --metrics JSON expected (the DAG stage), or --checkpoint FILE (a release)")
    import timm
    import torch

    import pcn.models  # noqa: F401  (registers the models)
    from pcn.data.folders import class_folders
    from pcn.data.loaders import build_loader, folder_index
    from pcn.models.checkpoint import load_checkpoint
    from pcn.train.engine import evaluate as eval_loop

    with stage(args, "evaluate", **outputs(args)) as st:
        p, e = st.params, st.params.evaluate
        setup_torch(p.runtime.threads)
        device = torch_device(p.runtime.device)
        checkpoint = args.weights
        model = timm.create_model(p.model.name, num_classes=num_classes(p), **p.model.options)
        load_checkpoint(model, checkpoint, strict=True)
        model.to(device=device, memory_format=torch.channels_last)  # as in training's evaluations
        paths = data_paths(p, args.ffcv)
        metrics = {"checkpoint": checkpoint, "img_size": e.img_size, "crop_ratio": e.crop_ratio}
        train_classes = class_folders(paths["train"])  # val and v2 must list the same classes
        kind = e.loader or p.data.loader
        metrics["loader"] = kind  # torch: the official protocol
        for split in ("val", "v2"):
            layout = SPLIT_LAYOUTS[split]
            if kind == "torch":
                # the official protocol, as released checkpoints are scored: the original
                # images, PIL bicubic resize to img_size / crop_ratio, centre crop
                index = folder_index(
                    Path(paths[split]),
                    layout=layout,
                    beton=Path(paths[f"{split}_beton"]),
                    expected_classes=train_classes,
                )
                transform = released_transform(e.img_size, e.crop_ratio)
                loader = _folder_loader(index, transform, e.batch_size, p.data.num_workers, device)
            else:
                loader = build_loader(
                    beton=paths[f"{split}_beton"],
                    folder=paths[split],
                    kind=kind,
                    train=False,
                    img_size=e.img_size,
                    batch_size=e.batch_size,
                    aug=None,
                    crop_ratio=e.crop_ratio,
                    num_workers=p.data.num_workers,
                    seed=p.seed,
                    device=str(device),
                    layout=layout,
                    expected_classes=train_classes,
                )
            m = eval_loop(model, loader, device, precision=p.evaluate.precision)
            prefix = "" if split == "val" else "v2_"
            metrics.update(
                {
                    f"{prefix}top1": round(m["top1"], 3),
                    f"{prefix}top5": round(m["top5"], 3),
                    f"{prefix}loss": round(m["loss"], 5),
                    f"{prefix}n_images": m["n"],
                }
            )
        st.finish(metrics)
        print(f"top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  on {metrics['n_images']} val images")
    return 0


# --- released checkpoints -------------------------------------------------------------------


# The PatchConvNet release's evaluation crop at every resolution: the shorter side resized
# by 256/224, the centre cropped (deit's datasets.py of that release; 1.0 above 224 px came
# with DeiT III's later datasets.py).  paper/recipe.yaml, "evaluation crop ratio".
PAPER_CROP_RATIO = 224 / 256


def released_transform(img_size: int, crop_ratio: float):
    """PIL image -> normalised tensor: bicubic resize of the shorter side to
    ``floor(img_size / crop_ratio)``, centre crop ``img_size``, ImageNet mean/std (timm's
    eval transform, the one deit's main.py builds)."""
    from timm.data import create_transform

    return create_transform(img_size, is_training=False, interpolation="bicubic", crop_pct=crop_ratio)


def read_released(path: str):
    """The state_dict of a checkpoint file, read without executing pickled code."""
    from pcn.models.checkpoint import read_checkpoint, unwrap_state_dict

    return unwrap_state_dict(read_checkpoint(path), source=path)


def released_model(state_dict, path: str, name: str | None = None):
    """(timm name, model holding the checkpoint's weights).  Without ``name``, the
    registered PatchConvNet whose keys and shapes the checkpoint has."""
    import timm
    import torch

    import pcn.models  # noqa: F401  (registers the PatchConvNets)
    from pcn.models.checkpoint import CheckpointError, check_state_dict, checkpoint_classes

    k = checkpoint_classes(state_dict)
    classes = {} if k is None else {"num_classes": k}
    if name is None:
        # Compare shapes on the meta device with one class (building the multi-class
        # model's 1000 heads takes seconds there); the classifier is checked below.
        per_class = ("head.", "cls_token")
        trunk = {key: tuple(v.shape) for key, v in state_dict.items() if not key.startswith(per_class)}
        multiclass = "head.0.weight" in state_dict  # the trunks of S60 and S60 multi-class are alike
        best = (float("-inf"), "")
        for candidate in timm.list_models("patchconvnet_*"):
            with torch.device("meta"):
                shape_model = timm.create_model(candidate, num_classes=1)
            shapes = {
                key: tuple(v.shape) for key, v in shape_model.state_dict().items() if not key.startswith(per_class)
            }
            if shapes == trunk and shape_model.multiclass == multiclass:
                name = candidate
                break
            best = max(
                best, (sum(trunk.get(key) == s for key, s in shapes.items()) - abs(len(trunk) - len(shapes)), candidate)
            )
        if name is None:
            with torch.device("meta"):
                closest = timm.create_model(best[1], **classes)
            try:
                check_state_dict(closest, state_dict, source=path)
            except CheckpointError as exc:
                raise CheckpointError(
                    f"{exc} (no registered PatchConvNet has this checkpoint's keys and shapes; "
                    f"closest: {best[1]}; pass --model NAME)"
                ) from None
            name = best[1]
    try:
        with torch.device("meta"):
            shape_model = timm.create_model(name, **classes)
    except RuntimeError as exc:  # timm's "Unknown model"
        raise UserError(f"--model {name}: {exc}") from None
    check_state_dict(shape_model, state_dict, source=path)  # names the first missing / unexpected / misshapen key
    model = timm.create_model(name, **classes)
    model.load_state_dict(state_dict)
    return name, model


def _folder_loader(index, transform, batch_size: int, num_workers: int, device):
    """Every image of a scanned folder once, in order, through ``transform``."""
    import torch

    from pcn.data.loaders import FolderDataset

    dataset = FolderDataset(index, transform, seed=0, rank=0, random=False)
    order = [(i, i) for i in range(len(dataset))]  # (sample, position in the epoch)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=order, num_workers=num_workers, pin_memory=device.type == "cuda"
    )


SHA_CHARS = 12  # of the checkpoint's SHA-256 in its result's file name


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def released_result_path(model: str, img_size: int, sha256: str) -> Path:
    return RELEASED_DIR / f"{model}-{img_size}-{sha256[:SHA_CHARS]}.json"


def evaluate_released(args) -> int:
    import torch

    from pcn.config import load_params
    from pcn.data.folders import scan_folder
    from pcn.errors import DatasetError
    from pcn.train.engine import evaluate as eval_loop

    p = load_params(args.params)
    setup_torch(p.runtime.threads)
    check_writable(RELEASED_DIR / "any.json")  # a read-only metrics folder fails now, not after the scoring
    # Bad input fails here, before any tracking run or output exists.
    name, model = released_model(read_released(args.checkpoint), args.checkpoint, args.model)
    img_size = args.img_size or int(model.pretrained_cfg["input_size"][-1])
    crop_ratio = PAPER_CROP_RATIO if args.crop_ratio is None else args.crop_ratio
    paths = data_paths(p)
    val = scan_folder(paths["val"])
    if val.num_classes != model.num_classes:
        raise DatasetError(
            f"{paths['val']}: {val.num_classes} class folders, but the checkpoint's "
            f"classifier has {model.num_classes} classes"
        )
    v2 = scan_folder(paths["v2"], SPLIT_LAYOUTS["v2"], train_classes=val.class_names)

    with stage(
        args,
        "evaluate_released",
        ("evaluate", "runtime", "data.root", "data.imagenet", "data.imagenet_v2"),
        tags={"pcn.checkpoint": str(args.checkpoint), "pcn.model": name},
    ) as st:
        device = torch_device(p.runtime.device)
        model.to(device=device, memory_format=torch.channels_last)
        transform = released_transform(img_size, crop_ratio)
        metrics = {"model": name, "img_size": img_size, "crop_ratio": crop_ratio}
        for prefix, index in (("", val), ("v2_", v2)):
            loader = _folder_loader(index, transform, p.evaluate.batch_size, p.data.num_workers, device)
            m = eval_loop(model, loader, device, precision=p.evaluate.precision)
            metrics.update(
                {
                    f"{prefix}top1": round(m["top1"], 3),
                    f"{prefix}top5": round(m["top5"], 3),
                    f"{prefix}n_images": m["n"],
                }
            )
        sha = file_sha256(args.checkpoint)
        metrics.update({"checkpoint": str(args.checkpoint), "checkpoint_sha256": sha})
        out = released_result_path(name, img_size, sha)
        st.finish(metrics, out)
    print(
        f"{name} at {img_size} px (crop ratio {crop_ratio:g}): top-1 {metrics['top1']:.2f}%, "
        f"top-5 {metrics['top5']:.2f}% on {metrics['n_images']} val images; ImageNet-v2 top-1 "
        f"{metrics['v2_top1']:.2f}% on {metrics['v2_n_images']} -> {out}"
    )
    return 0


def evaluate_registered(args) -> int:
    """Score a model of the MLflow registry (``--model models:/<name>/<version|@alias>``) on
    ImageNet val and v2 with the released checkpoints' protocol, into
    metrics/registered/<name>-v<version>.json.  The model is loaded as data, as a released
    checkpoint is: built from its recorded timm name and options, its weights read with
    ``torch.load(weights_only=True)`` (pcn.tracking.registry.load_version); a version whose
    files hold code is refused in one line before anything runs or is written."""
    import torch

    from pcn.config import load_params
    from pcn.data.folders import scan_folder
    from pcn.tracking.registry import load_version, resolve_version
    from pcn.tracking.runs import tracking_uri
    from pcn.train.engine import evaluate as eval_loop

    p = load_params(args.params)
    setup_torch(p.runtime.threads)
    check_writable(REGISTERED_DIR / "any.json")  # a read-only metrics folder fails now, not after the scoring
    uri = tracking_uri(p.tracking.uri)
    version = resolve_version(args.model, uri)  # bad input fails here, before anything is written
    model, logged_size = load_version(version, uri)  # never unpickles what the store serves
    img_size = args.img_size or logged_size
    crop_ratio = p.evaluate.crop_ratio if args.crop_ratio is None else args.crop_ratio
    paths = data_paths(p)
    val = scan_folder(paths["val"])
    v2 = scan_folder(paths["v2"], SPLIT_LAYOUTS["v2"], train_classes=val.class_names)
    with stage(
        args,
        "evaluate_registered",
        ("evaluate", "runtime", "data.root", "data.imagenet", "data.imagenet_v2"),
        tags={"pcn.model_uri": args.model, "pcn.model_version": str(version.version)},
    ) as st:
        device = torch_device(p.runtime.device)
        model.to(device=device, memory_format=torch.channels_last)
        transform = released_transform(img_size, crop_ratio)
        metrics = {"model_uri": args.model, "model_name": version.name, "model_version": int(version.version)}
        metrics.update({"source_run_id": version.run_id, "img_size": img_size, "crop_ratio": crop_ratio})
        for prefix, index in (("", val), ("v2_", v2)):
            loader = _folder_loader(index, transform, p.evaluate.batch_size, p.data.num_workers, device)
            m = eval_loop(model, loader, device, precision=p.evaluate.precision)
            metrics.update({f"{prefix}{k}": round(m[k], 3) for k in ("top1", "top5")} | {f"{prefix}n_images": m["n"]})
        out = REGISTERED_DIR / f"{version.name}-v{version.version}.json"
        st.finish(metrics, out)
    print(
        f"{args.model} (version {version.version}, run {version.run_id}): top-1 {metrics['top1']:.2f}%, "
        f"ImageNet-v2 top-1 {metrics['v2_top1']:.2f}% -> {out}"
    )
    return 0


def complexity(args) -> int:
    from pcn.eval.complexity import complexity_table, write_markdown

    with stage(args, "complexity", **outputs(args)) as st:
        p, c = st.params, st.params.complexity
        setup_torch(p.runtime.threads)
        device = str(torch_device(p.runtime.device))
        # Every model at the configured resolutions; the pipeline's own model also at the
        # resolutions it is trained at.  Params and GMACs are counted on shapes alone;
        # throughput and memory only for the timed models (large sizes take minutes per
        # batch on a CPU).
        plan = [(m, r) for m in c.models for r in c.resolutions]
        plan += [(p.model.name, r) for r in (p.pretrain.img_size, p.finetune.img_size) if (p.model.name, r) not in plan]
        rows = []
        for model, res in plan:
            timed = c.timed is None or model in c.timed
            try:
                rows += complexity_table(
                    [model], [res], batch_size=c.batch_size, device=device, warmup=1, iters=c.iters, measure=timed
                )
            except Exception as exc:  # noqa: BLE001 - one model that cannot run at a size must not hide the others
                rows.append(
                    {
                        "model": model,
                        "img_size": res,
                        "params_m": None,
                        "gmacs": None,
                        "throughput": None,
                        "peak_mem_mb": None,
                        "mem_method": None,
                        "device": device,
                        "batch_size": None,
                        "error": f"{exc.__class__.__name__}: {exc}"[:ERROR_CHARS],
                    }
                )
                print(f"complexity: {model} at {res} px failed: {rows[-1]['error']}")
        out = Path(st.out)
        with atomic_path(out) as tmp:
            write_markdown(rows, tmp)
        st.finish({"device": device, "rows": rows}, artifacts=(out,))
        print(out.read_text())
    return 0
