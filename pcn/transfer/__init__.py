"""Transfer to dense tasks: UperNet semantic segmentation and Mask R-CNN detection.

The column trunk gives four feature maps (``pyramid``), the tasks put torchvision's
Mask R-CNN (``detection``) or segmentation-models-pytorch's UperNet decoder
(``segmentation``) on them, the loaders read the ADE20k and COCO layouts
(``datasets``), and ``metrics`` scores them (one confusion matrix; pycocotools).

What both tasks share, split as ``pcn.train`` is: the job spec (``job``: plain values,
so that submitit can pickle it), the submitit task around it (``task``: requeued as
itself; on preemption it saves and requeues as classification training does), the
training loop (``loop``: the classification engine's :class:`pcn.train.loop.Loop`, one
epoch of ``iters`` steps, exact resume from ``work_dir/last.pth``), the rank split
(``distributed``), the run skeleton (``runner``) and the shared outputs (``outputs``).

Distributed runs: the task joins the job's process group the way classification
training does (:mod:`pcn.train.distributed`: rank, world and rendezvous from
submitit, nccl on GPUs, gloo on CPU), wraps the model in DDP (``distribute``)
and gives each rank its slice of every global batch (``IterationSampler``), so
the images of one iteration are those of a one-process run at the same global batch.
Rank 0 writes the resume state, the outputs and the MLflow points. Evaluation is
sharded: rank ``r`` scores images ``r, r + world, ...`` and writes its share into
``work_dir``; rank 0 collects them after a barrier (``shard``).

Importing this package loads no torch: the stage imports it to submit the job.
"""

from pcn.transfer.distributed import IterationSampler, distribute, shard
from pcn.transfer.job import TransferJob
from pcn.transfer.loop import LoopResult, train_loop
from pcn.transfer.task import TransferTask

__all__ = ["IterationSampler", "LoopResult", "TransferJob", "TransferTask", "distribute", "shard", "train_loop"]
