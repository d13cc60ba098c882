"""What a run directory is, read without JAX: finding runs and their configs (``runs``), reading per-example
records (``records``), exporting tidy CSVs (``export``) and drawing a run's curves (``plots``). The analyses in
``memdyn.studies`` build on this layer, so they run on a machine without accelerators or JAX at all."""
