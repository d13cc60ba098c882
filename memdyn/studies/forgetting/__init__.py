"""Forgetting after a special batch (Tirumala et al. 2022): forgetting curves of inserted sets against a sham control.
`analysis` (memdyn analyze forgetting), `measures` (curves, retained trace, fits), `plots`."""
