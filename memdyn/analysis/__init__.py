"""Analyses of finished memdyn runs (read their CSVs, no JAX)."""
