"""Values read from metrics files, each with the file and key it came from, and the MLflow
run behind each metrics file.

Every number the report shows as *reproduced* or *measured* is a :class:`Sourced` value:
read from a metrics file at a JSON key, never typed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.analysis.paths import RunPaths

NONE = "—"

_KEY = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def lookup(obj: Any, key: str) -> Any:
    """``obj`` at a key path such as ``rows[3].params_m`` or ``ablations.avgpool.vs_baseline.diff``."""
    for name, index in _KEY.findall(key):
        obj = obj[int(index)] if index else obj[name]
    return obj


@dataclass(frozen=True)
class Sourced:
    """A number (or word) taken from a metrics file: the file, the key, and how it is printed."""

    value: Any
    file: str
    key: str
    fmt: str = ".2f"

    def __str__(self) -> str:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)):
            return str(self.value)
        return format(self.value, self.fmt)


class Metrics:
    """The metrics files of one run, read once; ``get`` returns Sourced values.  A file is
    named as it is cited (``file("eval")``: metrics/eval.json), relative to the run's root."""

    def __init__(self, paths: RunPaths):
        self.paths = paths
        self.root = paths.root
        self._cache: dict[str, Any] = {}

    def file(self, name: str) -> str:
        return self.paths.metric(name)

    def load(self, rel: str) -> Any | None:
        if rel not in self._cache:
            p = self.root / rel
            try:
                self._cache[rel] = json.loads(p.read_text()) if p.is_file() else None
            except json.JSONDecodeError:
                self._cache[rel] = None
        return self._cache[rel]

    def exists(self, rel: str) -> bool:
        return self.load(rel) is not None

    def get(self, rel: str, key: str, fmt: str = ".2f") -> Sourced | None:
        doc = self.load(rel)
        if doc is None:
            return None
        try:
            value = lookup(doc, key)
        except (KeyError, IndexError, TypeError):
            return None
        return None if value is None else Sourced(value, rel, key, fmt)


def metrics_writers(params) -> dict[str, tuple[str, dict[str, str]]]:
    """metrics file -> (stage, MLflow tags of its instance), from the stage table.

    The grid stages tag their runs ``pcn.seed`` with the seed wildcard and ``pcn.variant``
    with the other one (variant, pool, init or point: pcn.steps.experiments)."""
    from pcn.stages import build_stages

    out = {}
    for stage in build_stages(params):
        for wc in stage.instances():
            tags = {("pcn.seed" if k == "seed" else "pcn.variant"): v for k, v in wc.items()}
            for path in stage.metrics:
                out[path.format(**wc)] = (stage.name, tags)
    return out


class RunIndex:
    """The MLflow run behind each metrics file (failure-safe: unknown -> '—').

    A metrics file that names its run (``mlflow_run_id``) is believed; otherwise the latest
    finished run of the stage that writes the file (by its ``pcn.stage`` tag) is looked up."""

    def __init__(self, params, metrics: Metrics):
        self.params = params
        self.metrics = metrics
        self._client = None
        self._exp_id: str | None = None
        self._writers: dict[str, tuple[str, dict[str, str]]] | None = None
        self._cache: dict[str, str] = {}
        self._failed = False

    def _connect(self) -> bool:
        if self._failed:
            return False
        if self._client is None:
            try:
                from pcn.tracking import client, tracking_uri

                uri = tracking_uri(self.params.tracking.uri)
                if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
                    self._failed = True  # no store yet: do not create an empty one
                    return False
                self._client = client(uri)
                exp = self._client.get_experiment_by_name(self.params.tracking.experiment)
                self._exp_id = exp.experiment_id if exp else None
            except Exception:  # noqa: BLE001 - the report is written without run ids then
                self._failed = True
                return False
        return self._exp_id is not None

    def stage_of(self, rel: str) -> tuple[str, dict[str, str]] | None:
        """The stage (and instance tags) that writes a metrics file; None for a file no stage writes."""
        if self._writers is None:
            self._writers = metrics_writers(self.params)
        return self._writers.get(rel)

    def run_id(self, rel: str) -> str:
        if rel in self._cache:
            return self._cache[rel]
        doc = self.metrics.load(rel)
        rid = doc.get("mlflow_run_id") if isinstance(doc, dict) else None
        writer = self.stage_of(rel) if not rid else None
        if writer and self._connect():
            stage, tags = writer
            filt = [f"tags.`pcn.stage` = '{stage}'", "attributes.status = 'FINISHED'"]
            filt += [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
            try:
                runs = self._client.search_runs(
                    [self._exp_id], " and ".join(filt), order_by=["attributes.start_time DESC"], max_results=1
                )
                rid = runs[0].info.run_id if runs else None
            except Exception:  # noqa: BLE001
                rid = None
        self._cache[rel] = rid or NONE
        return self._cache[rel]
