"""The dense-transfer job spec: what one segmentation or detection run needs (picklable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pcn.train.job import JobSpec


@dataclass
class TransferJob(JobSpec):
    """A dense-transfer run; the runtime fields are :class:`pcn.train.job.JobSpec`'s."""

    task: Literal["segmentation", "detection"]
    init: Literal["pretrained", "scratch"]
    config: dict[str, Any]  # SegmentationConfig / DetectionConfig .model_dump()
    data_root: str  # the ADE20k root (images/, annotations/) or the COCO root
    plots_path: str  # plots/<stage>.csv (step, loss)
    checkpoint: str | None = None  # backbone weights for init == "pretrained"
    num_workers: int = 0  # loader workers per rank
    stage: str = field(default="segmentation", kw_only=True)
    # Its own value, as before the specs shared a base (training's is 180 s); its barriers
    # also wait for every rank's share of the sharded evaluation.
    dist_timeout_s: int = field(default=600, kw_only=True)

    @property
    def work_dir(self) -> Path:
        """Resume state of an interrupted run; a sibling of the output folder, removed on success."""
        out = Path(self.out_dir)
        return out.parent / f".{out.name}.work"

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.pth"

    def trajectory(self) -> dict[str, Any]:
        """Also left out: the loss-curve file and the loader's workers."""
        d = super().trajectory()
        for key in ("plots_path", "num_workers"):
            d.pop(key)
        return d

    def cfg(self, key: str, default: Any = None) -> Any:
        return self.config.get(key, default)
