"""Predictable memorization (Biderman et al. 2023): how well smaller or earlier models predict a large model's memorized
set. `analysis` (memdyn analyze predict), `extracts` (reading memdyn extract files), `bootstrap` (intervals),
`report`."""
