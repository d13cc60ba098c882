"""Memorization dynamics across sizes (Tirumala et al. 2022): M(f) per epoch, T(N, tau), the overfitting point.
`analysis` (memdyn analyze memorization), `measures` (the computations), `plots`."""
