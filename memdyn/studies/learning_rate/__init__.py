"""Memorization speed against the peak learning rate (Tirumala et al. 2022).
`analysis`: memdyn analyze learning_rate."""
