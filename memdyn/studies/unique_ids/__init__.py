"""Unique identifiers (Tirumala et al. 2022): original vocabulary, enlarged vocabulary, prepended document IDs.
`analysis`: memdyn analyze unique_ids."""
