"""MLflow: the pipeline's parent and stage runs, the model registry, and `pcn track sync`."""
