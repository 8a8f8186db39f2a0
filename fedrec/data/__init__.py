"""Datasets: a schema, loaders (synthetic, MovieLens, any file) and the per-silo split."""
