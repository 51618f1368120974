"""Datasets: the on-disk format (schema), the embedded generator and the hub loader."""
