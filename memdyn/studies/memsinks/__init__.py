"""Memorization Sinks (Ghosal et al. 2025). `masks`: the sequence-tied sink masks of the MLP units, sharded with them;
`analysis`: memdyn analyze memsinks."""
