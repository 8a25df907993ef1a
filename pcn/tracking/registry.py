"""Trained models as MLflow models: logged with their run, the fine-tuned one registered.

A stage's model goes into its run as an MLflow ``pytorch`` model (``MLmodel``, the
weights, a signature and an input example), so the UI shows it with the run and
``models:/<name>/<version>`` or ``models:/<name>@latest`` reach it.

Why not ``mlflow.pytorch.log_model``: the project's default store is a SQLite file whose
artifacts live in ``mlartifacts/`` behind the proxied root ``mlflow-artifacts:/`` (see
:mod:`pcn.tracking.runs`), which MLflow's client uploads to only through a running server.  So
the model is written with ``mlflow.pytorch.save_model`` (the same files ``log_model``
writes) and placed with the run's other artifacts by :class:`pcn.tracking.runs.RunLogger`,
which handles both a SQLite store and a server; the version is then registered against
that artifact path and the run.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path

from pcn.errors import UserError
from pcn.tracking.runs import RunLogger, local_artifacts, one_line, store_problem, turn_off
from pcn.tracking.runs import client as mlflow_client

MODEL_ARTIFACT = "model"  # the model's folder among the run's artifacts
NEWEST = "newest"  # the alias that follows the newest version ("latest" is MLflow's reserved word)


def registered_name(scale: str) -> str:
    """The registry's name for the pipeline's fine-tuned model at one scale."""
    return f"patchconvnet-{scale}"


def log_model(run: RunLogger, model, img_size: int, register_as: str | None = None) -> int | None:
    """Log ``model`` (eval mode, on the CPU) into ``run``; with ``register_as``, register it
    as a new version of that name, aliased ``newest``.  Returns the version, or None.
    Failure-safe like every tracking call: the stage's files are the record."""
    if not run.enabled or store_problem(run.uri):
        return None
    try:
        _save_into_run(run, model, img_size)
        return _register(run, register_as) if register_as else None
    except Exception as exc:  # noqa: BLE001 - tracking must never kill a stage
        turn_off(run.uri, f"model logging failed ({one_line(exc)})")
        return None


def _save_into_run(run: RunLogger, model, img_size: int) -> None:
    import mlflow.pytorch
    import timm
    import torch
    from mlflow.models import infer_signature

    model = model.to("cpu").eval()
    example = torch.zeros(1, 3, img_size, img_size)
    with torch.no_grad():
        logits = model(example)
    signature = infer_signature(example.numpy(), logits.numpy())
    with tempfile.TemporaryDirectory(prefix="pcn_model_") as tmp:
        folder = Path(tmp) / MODEL_ARTIFACT
        # pickle, not MLflow 3's default torch.export ("pt2"): exporting the demo model took
        # about 25 s on 2 cores, longer for S60; loading needs the pcn package either way.
        # The requirements are named: MLflow's inference of them re-imports the model in a
        # subprocess (about 20 s here).
        with _quiet("mlflow.pytorch"):  # its warning on pickle, at every save
            mlflow.pytorch.save_model(
                model,
                folder,
                signature=signature,
                input_example=example.numpy(),
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"],
            )
        run.log_artifact(folder)


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _register(run: RunLogger, name: str) -> int:
    from mlflow.exceptions import MlflowException

    client = mlflow_client(run.uri)
    try:
        client.create_registered_model(name, description="PatchConvNet fine-tuned by the pipeline (pcn finetune)")
    except MlflowException:
        pass  # registered by an earlier run
    source = f"{client.get_run(run.run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
    version = client.create_model_version(name, source, run_id=run.run_id)
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


def resolve_version(uri: str, tracking: str):
    """The registry's version that ``uri`` names; one line naming it and what exists if not."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_model_uri(uri)
    client = mlflow_client(tracking)
    names = sorted(m.name for m in client.search_registered_models())
    if name not in names:
        raise UserError(f"--model {uri}: no registered model {name!r} (registered: {', '.join(names) or 'none'})")
    try:
        return client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        aliases = sorted(client.get_registered_model(name).aliases)
        raise UserError(
            f"--model {uri}: {name!r} has no {'alias ' + repr(alias) if alias else 'version ' + version} "
            f"(versions: {', '.join(map(str, versions)) or 'none'}; aliases: {', '.join(aliases) or 'none'})"
        ) from None


def load_version(version, tracking: str):
    """(the torch module a registry version holds, the image size its signature takes)."""
    import mlflow.artifacts
    import mlflow.pytorch
    from mlflow.models import get_model_info

    local = local_artifacts(version.source, tracking)  # a SQLite store: the files are on disk
    if local is None:
        local = Path(mlflow.artifacts.download_artifacts(version.source, tracking_uri=tracking))
    img_size = int(get_model_info(str(local)).signature.inputs.inputs[0].shape[-1])
    return mlflow.pytorch.load_model(str(local), map_location="cpu"), img_size
