"""The `pcn` verbs: which step function runs each, and its one-line help."""

# verb -> ("module:function", help).  The CLI builds its subcommands from it, importing a
# module only when its verb runs (`pcn --help` stays fast); the stage table reads which
# module each stage runs, so that a stage depends on its own code.
VERBS: dict[str, tuple[str, str]] = {
    "front-end": (
        "pcn.steps.front_end:front_end",
        "the DAG's first stage: refuses while another front end runs (a bare `dvc repro` has no start hook)",
    ),
    "make-demo": ("pcn.steps.data:make_demo", "synthesise the demo datasets (ImageNet, ADE20k, COCO layouts)"),
    "manifest": (
        "pcn.steps.data:manifest",
        "refresh the stat listing (path, size, mtime) of each real dataset the DAG reads",
    ),
    "convert": ("pcn.steps.data:convert", "convert the ImageFolder splits to FFCV .beton files"),
    "pixel-baseline": ("pcn.steps.data:pixel_baseline", "linear classifier on average-pooled raw pixels"),
    "pretrain": ("pcn.steps.train:pretrain", "pretrain the model (local or SLURM through submitit)"),
    "finetune": ("pcn.steps.train:finetune", "fine-tune the pretrained model at a higher resolution"),
    "evaluate": ("pcn.steps.evaluate:evaluate", "top-1/top-5 of the fine-tuned model on the val split(s)"),
    "complexity": ("pcn.steps.evaluate:complexity", "params, GMACs, throughput, peak memory"),
    "segmentation": ("pcn.steps.transfer:segmentation", "UperNet semantic segmentation transfer (ADE20k layout)"),
    "detection": ("pcn.steps.transfer:detection", "Mask R-CNN detection transfer (COCO layout)"),
    "ablate": ("pcn.steps.experiments:ablate", "train one ablation variant for one seed"),
    "resnet-pool": ("pcn.steps.experiments:resnet_pool", "ResNet with average vs attention pooling"),
    "multiclass": ("pcn.steps.experiments:multiclass", "multi-class-token model, scratch or fine-tuned"),
    "depth-width": ("pcn.steps.experiments:depth_width", "one point of the depth x width grid"),
    "summarize": ("pcn.steps.experiments:summarize", "seeds -> means, intervals and verdicts"),
    "attention": ("pcn.steps.report:attention", "attention maps and their localisation scores"),
    "figures": ("pcn.steps.report:figures", "every figure, from the metrics files"),
    "report": ("pcn.steps.report:report", "paper-vs-reproduced report (Markdown + HTML)"),
    "dag": ("pcn.steps.tools:dag", "write dvc.yaml from the stage table (--check: fail if stale)"),
    "params": ("pcn.steps.tools:show_params", "print the resolved params (after the scale switch)"),
    "scale": ("pcn.steps.tools:set_scale", "switch params.yaml to demo | study | paper and rewrite dvc.yaml"),
    "dryrun": (
        "pcn.steps.tools:dryrun",
        "print the SLURM jobs the scale in force (params.yaml's `scale`) would submit, with their GPU-hours",
    ),
    "run": ("pcn.steps.tools:run_pipeline", "run the whole DAG with snakemake or dvc under one MLflow parent run"),
    "ui": ("pcn.steps.tools:ui", "start the MLflow UI on the pipeline's store"),
    "track": (
        "pcn.steps.tools:track",
        "sync: create the MLflow run of every stage output in the workspace that has none",
    ),
    "machine": (
        "pcn.steps.tools:machine",
        "this machine's 1-thread sgemm GFLOP/s and the Quickstart's expected minutes here",
    ),
    "rehearse": (
        "pcn.steps.rehearse:rehearse",
        "run the paper scale's DAG, capped to a few steps, on miniatures of the real datasets",
    ),
}

# The verbs that are tools around the DAG, not its stages: a front end never runs them as a stage.
TOOL_MODULES = ("pcn.steps.tools", "pcn.steps.rehearse")


def is_stage_verb(verb: str) -> bool:
    return VERBS[verb][0].split(":")[0] not in TOOL_MODULES
