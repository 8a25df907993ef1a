# One rule per stage of the table; matrix stages (variant x seed, ...) become wildcard rules.
# Training-like stages only submit and wait (their work runs in submitit jobs), so
# they stay on the submitting host whatever the executor (localrule).
for _stage in STAGES:

    rule:
        name:
            _stage.name
        input:
            _stage.deps,
        output:
            rule_outputs(_stage),
            _stage.metrics + _stage.plots,
        log:
            log_path(_stage),
        benchmark:
            _stage.benchmark
        priority: _stage.priority
        localrule: _stage.submits_job
        conda:
            "../../environment.yml"
        threads: _stage.threads
        resources:
            **slurm_resources(_stage),
        params:
            values=param_values(_stage),
            cmd=command(_stage),
        shell:
            "{params.cmd} > {log} 2>&1"
