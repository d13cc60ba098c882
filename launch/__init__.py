"""Launchers of memdyn's studies (a protocol of many runs, then its analysis). In a checkout run them as
``python launch/<study>.py``; after any install (they ship as ``memdyn.launch``) as ``python -m
memdyn.launch.<study>``."""
