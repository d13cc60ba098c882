"""memdyn's packaged configs (installed as ``memdyn.configs``): ``--config=<name>[:arg]`` names one of them.

Each config builds on its parent by importing it as a module (``from memdyn.configs import base``).
"""
