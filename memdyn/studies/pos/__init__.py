"""Parts of speech (Tirumala et al. 2022). `counts`: per-tag R(p) and R_mem(p) counts inside the jitted steps;
`analysis`: memdyn analyze pos."""
