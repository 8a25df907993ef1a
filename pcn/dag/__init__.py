"""The DAG: the stage table and its two front ends (Snakemake, DVC), the front-end lock,
dataset checks and manifests, and the paper-scale rehearsal."""
