"""A run's data. Read side (what training uses): ``store`` (the on-disk example store), ``order`` (the
step-indexed example order), ``feeder`` (the one path from stores to the device), ``run_data`` (a run's stores)
and ``vocab`` (special ids, vocabularies, decoding). Build side: ``memdyn.data.build`` (sources -> stores)."""
