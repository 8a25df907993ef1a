"""End to end: the whole DAG on a tiny demo config, through both front ends.

One copy of the project runs the DAG through Snakemake: where a SLURM cluster runs
or can be started (scripts/slurm-cluster.sh), as a user would on a cluster,
`snakemake --profile slurm all` (CPU stages as SLURM jobs of the executor plugin,
training-like stages as submitit SLURM jobs); elsewhere on local cores with the local
launcher.  Another copy runs `dvc repro` with the local launcher.  The tests then
check outputs, tracking, no-op re-runs, determinism across front ends and launchers,
and that a parameter change re-runs only what depends on it; only the check that the
jobs went through SLURM needs the cluster (marked slurm).
"""

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import require

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["pcn", "workflow", "Snakefile", "paper", "params.yaml", "slurm", "environment.yml"]

pytestmark = pytest.mark.slow
SLURM_PROFILE = ["--profile", "slurm"]

# Small enough to run every stage in a few minutes on 2 cores; still the real code paths.
TINY = {
    "data": {
        "demo": {"train_per_class": 40, "val_per_class": 10, "n_scenes_train": 60, "n_scenes_val": 20},
        "num_workers": 1,
    },
    "pretrain": {"epochs": 1, "batch_size": 32},
    "finetune": {"epochs": 1, "batch_size": 32},
    "complexity": {"models": ["patchconvnet_demo"], "resolutions": [64], "batch_size": 4, "iters": 1},
    "segmentation": {"iters": 4, "batch_size": 2},
    "detection": {"iters": 4, "batch_size": 2},
    "experiments": {
        "variants": {"baseline": {}, "avgpool": {"pool": "avg"}},
        "depth_width": [[32, 2]],
        "train": {"epochs": 1, "batch_size": 32},
    },
    "attention": {"n_images": 20, "n_figure": 2},
}


def run(cmd: list[str], cwd: Path, env_extra: dict | None = None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)


def check(cp: subprocess.CompletedProcess) -> str:
    assert cp.returncode == 0, f"{cp.args} failed:\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
    return cp.stdout + cp.stderr


def dvc_stale(project: Path, *targets: str) -> set[str]:
    """The stages `dvc status` lists as changed, less those DVC reruns at every repro
    (``always_changed``: the front-end check, the dataset listings): they are never up to date."""
    cp = run([str(BIN / "dvc"), "status", "--json", *targets], project)
    check(cp)
    status = json.loads(cp.stdout.strip() or "{}")
    return {name for name, changes in status.items() if changes != ["always changed"]}


def make_project(dest: Path, patch: dict) -> Path:
    from pcn.config import deep_merge

    dest.mkdir(parents=True)
    for name in COPY:
        src = ROOT / name
        if src.is_symlink():
            os.symlink(os.readlink(src), dest / name)
        elif src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    raw = deep_merge(yaml.safe_load((ROOT / "params.yaml").read_text()), patch)
    raw["experiments"]["variants"] = patch["experiments"]["variants"]  # replace, not merge
    (dest / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    check(run(["git", "init", "-q"], dest))
    check(run([str(BIN / "dvc"), "init", "-q"], dest))
    # the repository's DVC settings and plot templates
    shutil.copy(ROOT / ".dvc" / "config", dest / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", dest / ".dvc" / "plots")
    check(run([str(BIN / "pcn"), "dag"], dest))
    check(run(["git", "add", "-A"], dest))
    check(run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], dest))
    return dest


@pytest.fixture(scope="module")
def smk_engine(request) -> list[str]:
    """The Snakemake run's engine flags: the slurm profile when the session checks the SLURM
    run (the whole suite does, as CI) and the cluster runs or can be started; else none, the
    local launcher on this machine's cores (no SLURM, or `-m "not slurm"`)."""
    checks_slurm = any(
        item.get_closest_marker("slurm") and "smk_project" in item.fixturenames for item in request.session.items
    )
    if not checks_slurm:
        return []
    try:
        request.getfixturevalue("slurm_cluster")
    except pytest.skip.Exception:
        return []
    return SLURM_PROFILE


@pytest.fixture(scope="module")
def smk_project(tmp_path_factory, smk_engine):
    project = make_project(tmp_path_factory.mktemp("e2e") / "smk", TINY)
    audit = project.parent / "audit"  # every file each stage opens (pcn.dag.file_audit), outside the project
    audit.mkdir()
    out = check(
        run(
            [str(BIN / "pcn"), "run", "--engine", "snakemake", "--cores", "2", "all", *smk_engine],
            project,
            timeout=2400,
            env_extra={"PCN_AUDIT_DIR": str(audit)},
        )
    )
    return project, out


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("e2e") / "dvc", TINY)
    check(run([str(BIN / "dvc"), "repro"], project, timeout=1800))
    return project


def test_snakemake_runs_every_stage(smk_project):
    project, _ = smk_project
    from pcn.config import load_params
    from pcn.dag.stages import build_stages

    for stage in build_stages(load_params(project / "params.yaml")):
        for wc in stage.instances():
            for path in stage.all_paths():
                assert (project / path.format(**wc)).exists(), f"{stage.name}: missing {path.format(**wc)}"
            # Snakemake's benchmark file, which benchmarks/dag_profile.py reads
            assert (project / stage.benchmark.format(**wc)).is_file(), f"{stage.name}: no benchmark file"
    ev = json.loads((project / "metrics/eval.json").read_text())
    assert 0 <= ev["top1"] <= 100 and ev["top1"] <= ev["top5"] <= 100
    assert (project / "data/ffcv/train.beton").stat().st_size > 0
    assert "paper" in (project / "reports/report.md").read_text().lower()


@pytest.mark.slurm
def test_snakemake_ran_the_jobs_on_slurm(slurm_cluster, smk_engine, smk_project):
    project, _ = smk_project
    assert smk_engine == SLURM_PROFILE, "a cluster runs, so the DAG went through the slurm profile"
    # the training-like stages went through submitit to SLURM, the others through the executor plugin
    assert "as slurm job" in (project / "logs/pretrain.log").read_text()
    assert list((project / ".snakemake/slurm_logs").rglob("*.log")), "CPU stages ran as SLURM jobs"


def test_every_stage_run_is_tracked_under_one_pipeline_run(smk_project):
    project, _ = smk_project
    db = sqlite3.connect(project / "mlflow.db")
    rows = db.execute(
        "select r.run_uuid, t.value from runs r join tags t on t.run_uuid = r.run_uuid "
        "where t.key = 'mlflow.parentRunId'"
    ).fetchall()
    parents = {p for _, p in rows}
    assert len(parents) == 1, "all stage runs hang under one pipeline run"
    stages = {v for (v,) in db.execute("select value from tags where key = 'pcn.stage'")}
    from pcn.config import load_params
    from pcn.dag.stages import build_stages

    # every stage that computes a result has its run; the always-changed checks have none
    tracked = [s for s in build_stages(load_params(project / "params.yaml")) if not s.always_changed]
    assert {s.name for s in tracked} <= stages
    n_instances = sum(len(s.instances()) for s in tracked)
    assert len(rows) == n_instances
    # the demo data's content hash tags its run (it was read from a key the generator did not write)
    summary = json.loads((project / "data" / "demo" / "demo_summary.json").read_text())
    hashes = {v for (v,) in db.execute("select value from tags where key = 'data_hash'")}
    assert hashes == {summary["content_hash"]} and summary["content_hash"]
    # every run is named after its stage instance, and carries the commit MLflow's UI shows
    names = {
        n
        for (n,) in db.execute(
            "select name from runs where run_uuid in (select run_uuid from tags "
            "where key = 'pcn.kind' and value = 'stage')"
        )
    }
    expected = {s.instance_name(wc) for s in tracked for wc in s.instances()}
    assert names == expected, names ^ expected
    commits = db.execute("select count(*) from tags where key = 'mlflow.source.git.commit'").fetchone()[0]
    assert commits == len(rows) + 1, "every stage run and the pipeline run name their commit"
    # every training run (the stages that launch a training job) records system metrics
    training = {s.name for s in build_stages(load_params(project / "params.yaml")) if s.submits_job}
    measured = {
        v
        for (v,) in db.execute(
            "select distinct t.value from latest_metrics m join tags t on t.run_uuid = m.run_uuid "
            "and t.key = 'pcn.stage' where m.key = 'system/cpu_utilization_percentage'"
        )
    }
    assert training and training <= measured, training - measured
    # the parent run shows the headline numbers of the stages' files
    (parent,) = parents
    top1 = db.execute("select value from latest_metrics where run_uuid = ? and key = 'top1'", (parent,)).fetchone()
    assert top1 and top1[0] == json.loads((project / "metrics" / "eval.json").read_text())["top1"]


def test_rerun_with_nothing_changed_does_nothing(smk_project, dvc_project):
    project, _ = smk_project
    out = check(run([str(BIN / "snakemake"), "-n", "--cores", "2"], project))
    assert "Nothing to be done" in out
    for either in (dvc_project, project):  # after a Snakemake run, DVC agrees nothing is stale
        assert dvc_stale(either) == set()
    assert "Nothing to be done" in check(run([str(BIN / "snakemake"), "-n", "--cores", "2"], project)), (
        "`dvc status` re-hashed the outputs; Snakemake still finds nothing to do"
    )


def test_after_a_dvc_run_snakemake_finds_nothing_to_do(dvc_project):
    out = check(run([str(BIN / "snakemake"), "-n", "--quiet", "all"], dvc_project))
    assert "Nothing to be done" in out, out[-2000:]


def _affected(project: Path, edited: str) -> tuple[set[str], set[str]]:
    """(stage instances that run ``edited``, those plus everything downstream of them), from
    the stage table itself."""
    from pcn.config import load_params
    from pcn.dag.dvc_view import expand
    from pcn.dag.stages import build_stages

    instances = [i for s in build_stages(load_params(project / "params.yaml")) for i in expand(s)]
    direct = {i["name"] for i in instances if edited in i["deps"]}
    stale, outs = set(direct), set()
    while True:
        outs |= {o for i in instances if i["name"] in stale for o in i["outs"]}
        more = {i["name"] for i in instances if set(i["deps"]) & outs} - stale
        if not more:
            return direct, stale
        stale |= more


def test_editing_code_makes_exactly_the_stages_that_run_it_stale(smk_project, dvc_project):
    """Both front ends see an edit of one module, and rerun what runs it and what depends on
    that (Snakemake) / report what runs it (`dvc status` lists direct changes)."""
    edited = "pcn/eval/pixel_baseline.py"
    smk, _ = smk_project
    saved = {}
    for project in (smk, dvc_project):
        path = project / edited
        saved[path] = (path.read_text(), path.stat())
        path.write_text(saved[path][0] + "\n# an edit\n")
    try:
        direct, stale = _affected(smk, edited)
        assert "pixel_baseline" in direct and "report" in stale
        out = check(run([str(BIN / "snakemake"), "-n", "--cores", "2"], smk))
        rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}
        assert rules == {name.split("@")[0] for name in stale}, (rules, stale)
        for either in (dvc_project, smk):
            assert dvc_stale(either) == direct, either
    finally:
        for path, (text, st) in saved.items():  # content and time, so the later tests see no edit
            path.write_text(text)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _stale_in_both(smk: Path, dvc_project: Path) -> tuple[set[str], set[str]]:
    """The rules `snakemake -n` would run, and the stages `dvc status` lists."""
    out = check(run([str(BIN / "snakemake"), "-n", "--cores", "2"], smk))
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}
    return rules, dvc_stale(dvc_project)


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        # the paper's directions are read by the figures and the report
        ("paper/numbers.yaml", {"figures", "report"}),
        # another scale's values: nothing this run reads changed, for either front end
        ("params.yaml", set()),
    ],
)
def test_both_front_ends_agree_on_what_an_edit_makes_stale(smk_project, dvc_project, edited, expected):
    smk, _ = smk_project
    saved = {}
    for project in (smk, dvc_project):
        path = project / edited
        saved[path] = (path.read_text(), path.stat())
        if edited == "params.yaml":
            raw = yaml.safe_load(saved[path][0])
            raw["scales"]["paper"]["pretrain"]["epochs"] += 1
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
        else:
            path.write_text(saved[path][0] + "\n# an edit\n")
    try:
        rules, dvc_stale = _stale_in_both(smk, dvc_project)
        assert rules == expected, rules
        assert dvc_stale == expected, dvc_stale
    finally:
        for path, (text, st) in saved.items():  # content and time, so the later tests see no edit
            path.write_text(text)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_dvc_and_snakemake_give_the_same_metrics(smk_project, dvc_project):
    smk, _ = smk_project
    for name in ("eval.json", "pretrain.json", "ablations/baseline-s0.json"):
        a = json.loads((smk / "metrics" / name).read_text())
        b = json.loads((dvc_project / "metrics" / name).read_text())
        # Bit-exact, not close: same data (the .beton too), same seeds, same order.
        assert (a["top1"], a["top5"], a["loss"]) == (b["top1"], b["top5"], b["loss"]), name


def test_dvc_metrics_and_plots_render(dvc_project):
    shown = check(run([str(BIN / "dvc"), "metrics", "show"], dvc_project))
    for name in ("metrics/eval.json", "metrics/pretrain.json", "metrics/ablations.json", "metrics/attention.json"):
        assert name in shown
    check(run([str(BIN / "dvc"), "plots", "show", "-o", "dvc_plots"], dvc_project))
    html = (dvc_project / "dvc_plots" / "index.html").read_text()
    assert "plots/pretrain.csv" in html and "Training accuracy" in html
    assert "plots/grid_top1.csv" in html and "plots/depth_width.csv" in html, "the grid's plots"
    assert "cdn.jsdelivr" not in html and "<script src=" not in html, "the page must not load scripts from the web"


@pytest.mark.browser
def test_dvc_plots_page_renders_offline_in_chromium(dvc_project):
    """`dvc plots show`'s page draws its charts with no network: the Vega scripts are inlined."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        require(f"{chromium} not found", "chromium")
    from playwright.sync_api import sync_playwright

    out = dvc_project / "dvc_plots_offline"
    check(run([str(BIN / "dvc"), "plots", "show", "-o", str(out)], dvc_project))
    args = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=args)
        page = browser.new_page()
        page.route("http*://**", lambda route: route.abort())  # offline: any web request fails
        page.goto((out / "index.html").as_uri())
        page.wait_for_selector("svg.marks, canvas.marks", timeout=60_000)
        charts = page.locator(".vega-embed").count()
        browser.close()
    assert charts >= 3, f"{charts} charts drawn"


def test_snakemake_report_is_browsable(smk_project):
    project, _ = smk_project
    check(run([str(BIN / "snakemake"), "--report", "smk_report.zip"], project, timeout=600))
    import zipfile

    names = zipfile.ZipFile(project / "smk_report.zip").namelist()
    assert any(n.endswith("report.html") for n in names)
    assert any(n.endswith(".png") for n in names), "figures are part of the Snakemake report"


def test_changing_one_param_reruns_only_its_downstream(smk_project):
    project, _ = smk_project
    params = project / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["evaluate"]["batch_size"] = 64
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = check(run([str(BIN / "snakemake"), "-n", "--cores", "2"], project))
    rules = set(re.findall(r"^(?:local)?rule (\w+):", out, re.M)) - {"all"}
    assert rules == {"evaluate", "figures", "report"}, rules


@pytest.fixture
def dvc_copy(dvc_project, tmp_path):
    """A copy of the DVC project (cache included) that a test may change."""
    dest = tmp_path / "dvc_copy"
    shutil.copytree(dvc_project, dest, symlinks=True)
    return dest


def test_dvc_exp_run_on_a_recipe_key_runs_its_downstream(dvc_copy):
    out = check(run([str(BIN / "dvc"), "exp", "run", "-S", "evaluate.batch_size=64"], dvc_copy, timeout=900))
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    # the front-end check runs at every repro (always_changed), then what the key reaches
    assert ran == {"front_end", "evaluate", "figures", "report"}, (ran, out[-2000:])
    assert yaml.safe_load((dvc_copy / "params.yaml").read_text())["evaluate"]["batch_size"] == 64


def test_dvc_exp_run_on_a_shape_key_is_refused_naming_pcn_dag(dvc_copy):
    before = (dvc_copy / "metrics" / "ablations.json").read_text()
    cp = run([str(BIN / "dvc"), "exp", "run", "-S", "experiments.seeds=[0,1]"], dvc_copy, timeout=900)
    assert cp.returncode != 0
    assert "dvc.yaml is stale" in cp.stderr + cp.stdout and "`pcn dag`" in cp.stderr + cp.stdout
    assert (dvc_copy / "metrics" / "ablations.json").read_text() == before, "nothing is overwritten"


def test_finetune_registers_a_version_that_evaluate_scores(smk_project):
    """After a run the registry holds the fine-tuned model, linked to the finetune run, and
    `pcn evaluate --model models:/...` scores it; an unknown version is refused, nothing written."""
    from mlflow import MlflowClient

    project, _ = smk_project
    finetune = json.loads((project / "metrics" / "finetune.json").read_text())
    version = MlflowClient(f"sqlite:///{project / 'mlflow.db'}").get_model_version_by_alias(
        "patchconvnet-demo", "newest"
    )
    assert version.run_id == finetune["mlflow_run_id"] and finetune["registered_version"] == int(version.version)
    check(run([str(BIN / "pcn"), "evaluate", "--model", "models:/patchconvnet-demo@newest"], project, timeout=600))
    scored = json.loads((project / "metrics" / "registered" / f"patchconvnet-demo-v{version.version}.json").read_text())
    assert 0 <= scored["top1"] <= 100 and scored["n_images"] > 0 and scored["source_run_id"] == version.run_id
    bad = run([str(BIN / "pcn"), "evaluate", "--model", "models:/patchconvnet-demo/99"], project, timeout=300)
    assert bad.returncode == 2 and "has no version 99" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (project / "metrics" / "registered" / "patchconvnet-demo-v99.json").exists()


# What a stage may open besides its declared inputs and outputs: the params it is given, the
# code it runs (its code dependencies are declared per module; an import may touch others),
# the tracking store, logs and locks, and the engines' own folders.
UNDECLARED_OK = ("params.yaml", "pcn/", "mlflow.db", "mlartifacts/", "logs/", ".pcn/", ".snakemake/", ".dvc/", ".git/")


def _final(path: str) -> str:
    """``path`` with a temporary sibling of an output (pcn.io.atomic_path's
    ``.<name>.<host>-<pid>-*.tmp``, a folder, holding ``<name>`` for a file) standing for
    that output."""
    host = socket.gethostname()
    parts: list[str] = []
    for part in Path(path).parts:
        if parts and parts[-1].startswith("\0"):  # the file inside a temporary folder
            name = parts.pop()[1:]
            parts.append(name)
            if part == name:
                continue
        if part.startswith(".") and part.endswith(".tmp") and f".{host}-" in part:
            part = "\0" + part[1:].split(f".{host}-")[0]
        parts.append(part)
    return str(Path(*(p.lstrip("\0") for p in parts)))


def _declared(path: str, allowed: set[str]) -> bool:
    """``path`` or a folder above it is declared."""
    parts = Path(_final(path)).parts
    return any(str(Path(*parts[:n])) in allowed for n in range(1, len(parts) + 1))


def test_every_file_a_stage_opens_is_declared(smk_project):
    """Each demo stage ran under an audit hook (pcn.dag.file_audit): every project file it or its
    training job opened is a declared input or output of its instance, or code, params,
    tracking or logs.  An undeclared read is one neither front end would rerun the stage for."""
    from pcn.config import load_params
    from pcn.dag.stages import build_stages

    project, _ = smk_project
    declared: dict[str, set[str]] = {}
    beside_outs: dict[str, set[str]] = {}
    for stage in build_stages(load_params(project / "params.yaml")):
        for wc in stage.instances():
            one = stage.instance(wc)
            declared[stage.instance_name(wc)] = set(one.deps) | set(one.all_paths())
            beside_outs[stage.instance_name(wc)] = {str(Path(o).parent) for o in one.outs if Path(o).suffix}
    records = [json.loads(f.read_text()) for f in (project.parent / "audit").glob("*.json")]
    read: dict[str, set[str]] = {}
    written: dict[str, set[str]] = {}
    for r in records:
        if r["stage"] in declared:
            read.setdefault(r["stage"], set()).update(r["read"])
            written.setdefault(r["stage"], set()).update(r["written"])
    assert set(read) == set(declared), f"stages without an audit record: {set(declared) - set(read)}"
    # a stage may read back what it wrote itself: through Python, or (torch.save writes in
    # C++, unseen by the hook) a file beside one of its own cached output files
    own = {stage: {_final(w) for w in written[stage]} | beside_outs[stage] for stage in declared}
    undeclared = {
        stage: sorted(
            p
            for p in paths
            if not p.startswith(UNDECLARED_OK)
            and p not in own[stage]
            and str(Path(p).parent) not in own[stage]
            and not _declared(p, declared[stage])
        )
        for stage, paths in read.items()
    }
    assert not {s: v for s, v in undeclared.items() if v}, undeclared


# Last: it changes both projects' params (a new variant), which the tests above must not see.
def add_variant(project: Path) -> None:
    params = project / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["experiments"]["variants"]["no_se"] = {"se": False}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    check(run([str(BIN / "pcn"), "dag"], project))


def test_adding_a_variant_adds_exactly_its_stages(smk_project, dvc_project):
    add_variant(dvc_project)
    # `dvc status` (not `repro --dry`, which stops at the first missing input) lists the
    # stages whose inputs changed: the new instance, and the summary that reads it.
    changed = dvc_stale(dvc_project)
    assert {s for s in changed if "@" in s} == {"ablation@no_se-0"}, changed
    assert changed - {"ablation@no_se-0"} <= {"summarize", "figures", "report"}, changed

    project, _ = smk_project
    add_variant(project)
    smk = check(run([str(BIN / "snakemake"), "-n", "--cores", "2"], project))
    assert re.findall(r"wildcards: (.*)", smk) == ["variant=no_se, seed=0"]
