"""The body of each `pcn <verb>` (pcn.dag.verbs names which): params in, files out, one MLflow
run per stage.

Each function takes the parsed command-line arguments, reads params.yaml, calls the
library code in pcn.data / pcn.train / pcn.eval / pcn.transfer / pcn.analysis and
writes the outputs its command line names, atomically.
"""
