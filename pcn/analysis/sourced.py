"""Values read from metrics files, each with the file and key it came from, and the MLflow
run behind each metrics file.

Every number the report shows as *reproduced* or *measured* is a :class:`Sourced` value:
read from a metrics file at a JSON key, never typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcn.analysis.paths import RunPaths
from pcn.io import read_json
from pcn.tracking.runs import METRICS_TAG

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
            # a missing file is a stage that has not run (the report says so); a broken one is an error
            self._cache[rel] = read_json(p) if p.is_file() else None
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


class RunIndex:
    """The MLflow run behind each metrics file (failure-safe: unknown -> '—').

    A metrics file that names its run (``mlflow_run_id``) is believed; otherwise the latest
    finished run whose ``pcn.metrics`` tag (the metrics files its command names,
    pcn.steps.common.stage) lists the file is looked up."""

    def __init__(self, params, metrics: Metrics):
        self.params = params
        self.metrics = metrics
        self._client = None
        self._exp_id: str | None = None
        self._cache: dict[str, str] = {}
        self._failed = False

    def _connect(self) -> bool:
        if self._failed:
            return False
        if self._client is None:
            try:
                from pcn.tracking.runs import client, tracking_uri

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

    def run_id(self, rel: str) -> str:
        if rel in self._cache:
            return self._cache[rel]
        doc = self.metrics.load(rel)
        rid = doc.get("mlflow_run_id") if isinstance(doc, dict) else None
        if not rid and self._connect():
            filt = [f"tags.`{METRICS_TAG}` LIKE '%{rel}%'", "attributes.status = 'FINISHED'"]
            try:
                runs = self._client.search_runs(
                    [self._exp_id], " and ".join(filt), order_by=["attributes.start_time DESC"], max_results=50
                )
                rid = next((r.info.run_id for r in runs if rel in r.data.tags[METRICS_TAG].split()), None)
            except Exception:  # noqa: BLE001
                rid = None
        self._cache[rel] = rid or NONE
        return self._cache[rel]
