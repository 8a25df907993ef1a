"""Datasets for the PatchConvNet pipeline (synthetic demo data and loaders)."""
