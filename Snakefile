# Entry point for `snakemake` from the repository root; the workflow is in workflow/.
include: "workflow/Snakefile"


# The default target lives here: Snakemake ignores default targets set in included files.
rule all:
    input:
        all_outputs(),
