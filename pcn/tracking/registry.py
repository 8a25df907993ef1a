"""Trained models as MLflow models: logged with their run, the fine-tuned one registered.

A stage's model goes into its run as the folder ``model/``, so the UI shows it with the run
and ``models:/<name>/<version>`` or ``models:/<name>@newest`` reach it:

- ``state_dict.pt``: the weights, a state dict of tensors (``torch.save(model.state_dict())``);
- ``pcn_model.json``: how to build the model they fit: its timm name, constructor options,
  classes and image size (also tags of the registered version, for the UI);
- ``MLmodel`` and ``input_example.json``: MLflow's description (the signature the UI shows),
  with a ``pcn`` flavor only: no ``python_function`` or ``pytorch`` flavor, no pickle.

Loading is data only, as released checkpoints are loaded: the model is built from the
JSON (``timm.create_model`` after ``import pcn.models``) and the weights read with
``torch.load(weights_only=True)`` (:func:`pcn.models.checkpoint.load_checkpoint`).  A store
is shared: whoever can write to it can register any files, so nothing it serves is
unpickled (``mlflow.pytorch.load_model`` would run the code of a crafted ``model.pth``), and
a file that holds code, or options asking timm to load another file, are refused in one line.

Why not ``mlflow.pytorch.log_model``: it saves the whole module with pickle (its ``pt2``
export took about 25 s for the demo model on 2 cores), and the project's default store is a
SQLite file whose artifacts live in ``mlartifacts/`` behind the proxied root
``mlflow-artifacts:/`` (see :mod:`pcn.tracking.runs`), which MLflow's client uploads to only
through a running server.  So the folder is written here and placed with the run's other
artifacts by :class:`pcn.tracking.runs.RunLogger`, which handles both a SQLite store and a
server; the version is then registered against that artifact path and the run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pcn.errors import UserError
from pcn.tracking.runs import RunLogger, local_artifacts, one_line, store_problem, turn_off
from pcn.tracking.runs import client as mlflow_client

MODEL_ARTIFACT = "model"  # the model's folder among the run's artifacts
WEIGHTS_FILE = "state_dict.pt"  # in it: the state dict, tensors only
SPEC_FILE = "pcn_model.json"  # in it: timm name, options, classes, image size
SPEC_FORMAT = 1
FLAVOR = "pcn"  # the MLmodel's only flavor: MLflow's loaders find nothing to unpickle
NEWEST = "newest"  # the alias that follows the newest version ("latest" is MLflow's reserved word)
# Options of timm.create_model itself that read files or the network (weights, configs,
# hub downloads): a registered model's options may not name them.
REFUSED_OPTIONS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")


def registered_name(scale: str) -> str:
    """The registry's name for the pipeline's fine-tuned model at one scale."""
    return f"patchconvnet-{scale}"


def log_model(
    run: RunLogger,
    model,
    img_size: int,
    *,
    arch: str,
    options: dict[str, Any] | None = None,
    register_as: str | None = None,
) -> int | None:
    """Log ``model`` (eval mode, on the CPU) into ``run`` as its state dict and the recipe
    that rebuilds it: ``timm.create_model(arch, num_classes=model.num_classes, **options)``;
    with ``register_as``, register it as a new version of that name, aliased ``newest``.
    Returns the version, or None.  Failure-safe like every tracking call: the stage's files
    are the record."""
    if not run.enabled or store_problem(run.uri):
        return None
    try:
        spec = model_spec(arch, options or {}, int(model.num_classes), img_size)
        _save_into_run(run, model, spec)
        return _register(run, register_as, spec) if register_as else None
    except Exception as exc:  # noqa: BLE001 - tracking must never kill a stage
        turn_off(run.uri, f"model logging failed ({one_line(exc)})")
        return None


def model_spec(arch: str, options: dict[str, Any], num_classes: int, img_size: int) -> dict[str, Any]:
    """The JSON beside the weights: what builds the model they fit (plain values only)."""
    spec = {
        "format": SPEC_FORMAT,
        "timm_model": arch,
        "options": dict(options),
        "num_classes": num_classes,
        "img_size": img_size,
        "weights": WEIGHTS_FILE,
    }
    return json.loads(json.dumps(spec))  # refuses what JSON cannot hold, now rather than at load


def _save_into_run(run: RunLogger, model, spec: dict[str, Any]) -> None:
    import timm
    import torch
    from mlflow.models import Model, infer_signature

    model = model.to("cpu").eval()
    img_size = spec["img_size"]
    example = torch.zeros(1, 3, img_size, img_size)
    with torch.no_grad():
        logits = model(example)
    with tempfile.TemporaryDirectory(prefix="pcn_model_") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT
        folder.mkdir()
        # plain tensors: torch.load(weights_only=True) reads them back
        torch.save({k: v.detach() for k, v in model.state_dict().items()}, folder / WEIGHTS_FILE)
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
        mlmodel = Model(signature=infer_signature(example.numpy(), logits.numpy()))
        mlmodel.add_flavor(
            FLAVOR,
            weights=WEIGHTS_FILE,
            spec=SPEC_FILE,
            timm_model=spec["timm_model"],
            loader="pcn.tracking.registry.load_version",
            torch_version=torch.__version__.split("+")[0],
            timm_version=timm.__version__,
        )
        _save_input_example(mlmodel, example.numpy(), folder)
        mlmodel.save(str(folder / "MLmodel"))
        run.log_artifact(folder)


def _save_input_example(mlmodel, example, folder: Path) -> None:
    """``input_example.json`` and its entry in MLmodel, as MLflow's own save_model writes them
    (a private helper of MLflow's: without it the model is still complete)."""
    try:
        from mlflow.models.utils import _save_example

        _save_example(mlmodel, example, str(folder))
    except Exception:  # noqa: BLE001 - the example is a convenience for the UI
        pass


def _register(run: RunLogger, name: str, spec: dict[str, Any]) -> int:
    from mlflow.exceptions import MlflowException

    client = mlflow_client(run.uri)
    try:
        client.create_registered_model(name, description="PatchConvNet fine-tuned by the pipeline (pcn finetune)")
    except MlflowException:
        pass  # registered by an earlier run
    source = f"{client.get_run(run.run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    tags = {
        "pcn.timm_model": spec["timm_model"],
        "pcn.model_options": json.dumps(spec["options"], sort_keys=True),
        "pcn.num_classes": str(spec["num_classes"]),
        "pcn.img_size": str(spec["img_size"]),
    }
    version = client.create_model_version(name, source, run_id=run.run_id, tags=tags)
    client.set_registered_model_alias(name, NEWEST, version.version)
    return int(version.version)


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> (name, version, alias);
    a version ``latest`` (MLflow's word) is the alias ``newest``."""
    if not uri.startswith("models:/"):
        raise UserError(f"--model {uri}: expected models:/<name>/<version> or models:/<name>@<alias>")
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, _, alias = rest.partition("@")
        if name and alias and "/" not in rest:
            return name, None, alias
    else:
        name, _, version = rest.partition("/")
        if name and version == "latest":
            return name, None, NEWEST
        if name and version.isdigit():
            return name, version, None
    raise UserError(f"--model {uri}: expected models:/<name>/<version> or models:/<name>@<alias>")


def filter_string_value(value: str) -> str | None:
    """``value`` as a string literal of MLflow's search filters, or None where none can hold
    it.  The grammar takes a value in single or double quotes and knows no escapes (a doubled
    or backslashed quote stays in the value), so a value in the quotes it does not contain
    is read exactly, and one holding both kinds cannot be written."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def _versions_of(client, name: str) -> list[int]:
    """The version numbers of registered model ``name``, searched by exact name."""
    literal = filter_string_value(name)
    if literal is not None:
        found = _all_pages(client.search_model_versions, f"name = {literal}")
    else:  # no literal holds the name: every version, sorted out here
        found = [v for v in _all_pages(client.search_model_versions, None) if v.name == name]
    return sorted(int(v.version) for v in found)


def _all_pages(search, filter_string: str | None) -> list:
    out, token = [], None
    while True:
        page = search(filter_string, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def resolve_version(uri: str, tracking: str):
    """The registry's version that ``uri`` names; one line naming it and what exists if not."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(uri)
    client = mlflow_client(tracking)
    try:
        client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in _all_pages(client.search_registered_models, None))
        raise UserError(
            f"--model {uri}: no registered model {name!r} (registered: {', '.join(names) or 'none'})"
        ) from None
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        versions = _versions_of(client, name)
        aliases = sorted(client.get_registered_model(name).aliases)
        raise UserError(
            f"--model {uri}: {name!r} has no {'alias ' + repr(alias) if alias else 'version ' + version} "
            f"(versions: {', '.join(map(str, versions)) or 'none'}; aliases: {', '.join(aliases) or 'none'})"
        ) from None


def load_version(version, tracking: str):
    """(the torch module a registry version holds, the image size it was logged at).

    Data only: the model is built from ``pcn_model.json`` and its weights read from
    ``state_dict.pt`` with ``torch.load(weights_only=True)``; nothing the store serves is
    unpickled.  A version without these files (a pickled MLflow model, from an earlier pcn
    or from anyone who can write to the store), a weights file holding code, or a recipe
    that would load other files is refused in one line (UserError / CheckpointError)."""
    import timm

    import pcn.models  # noqa: F401  (registers the PatchConvNets)
    from pcn.models.checkpoint import CheckpointError, load_checkpoint

    what = f"registered model {version.name!r} version {version.version}"
    spec_path = _fetch(version, SPEC_FILE, tracking, what)
    weights = _fetch(version, WEIGHTS_FILE, tracking, what)
    spec = read_spec(spec_path, what)
    try:
        model = timm.create_model(
            spec["timm_model"], pretrained=False, num_classes=spec["num_classes"], **spec["options"]
        )
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{what}: {SPEC_FILE} does not build a model ({one_line(exc)})") from None
    try:
        load_checkpoint(model, weights, strict=True)
    except CheckpointError as exc:
        raise CheckpointError(f"{what}: {exc}") from None
    return model.eval(), spec["img_size"]


def _fetch(version, file: str, tracking: str, what: str) -> Path:
    """One file of the version's model folder, on disk (downloaded alone from a server's
    store); a missing one refused in one line."""
    import mlflow.artifacts

    missing = UserError(
        f"{what}: no state dict and recipe ({WEIGHTS_FILE}, {SPEC_FILE}) in {version.source}; pcn never "
        "unpickles what the store serves (a pickled MLflow model, as pcn logged before, is not loaded: "
        "log the model again with pcn finetune)"
    )
    local = local_artifacts(version.source, tracking)  # a SQLite store: the files are on disk
    if local is not None:
        path = local / file
        if not path.is_file():
            raise missing
        return path
    try:
        return Path(mlflow.artifacts.download_artifacts(f"{version.source.rstrip('/')}/{file}", tracking_uri=tracking))
    except Exception:  # noqa: BLE001 - MLflow's not-found errors differ per artifact store
        raise missing from None


def read_spec(path: Path, what: str) -> dict[str, Any]:
    """``pcn_model.json``, checked: a known timm name, whole numbers, options that are plain
    values and ask timm to read nothing (no weights, config or hub download)."""
    import timm

    import pcn.models  # noqa: F401

    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{what}: {SPEC_FILE} unreadable ({one_line(exc)})") from None
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        raise UserError(f"{what}: {SPEC_FILE} is not a pcn model record (format {SPEC_FORMAT} expected)")
    arch, options = spec.get("timm_model"), spec.get("options", {})
    if not isinstance(arch, str) or arch not in timm.list_models():
        raise UserError(f"{what}: {SPEC_FILE} names no known timm model ({arch!r})")
    for key in ("num_classes", "img_size"):
        if not isinstance(spec.get(key), int) or isinstance(spec[key], bool) or spec[key] < 1:
            raise UserError(f"{what}: {SPEC_FILE}: {key} {spec.get(key)!r} is not a positive whole number")
    if not isinstance(options, dict):
        raise UserError(f"{what}: {SPEC_FILE}: options must be a mapping")
    refused = sorted(k for k in options if k in REFUSED_OPTIONS)
    if refused:
        raise UserError(f"{what}: {SPEC_FILE}: option {refused[0]!r} refused (it would load other files)")
    return {**spec, "options": options}
