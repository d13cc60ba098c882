"""The ``memdyn`` command: ``main`` is the entry point; each command is one module (``train``, ``eval``,
``extract``, ``import_hf``, ``rows``, ``sweep``, ``export``, ``analyze``, ``vocab``) that declares its flags with
``command.Flag`` and runs itself. Help, the refusal of another command's flags and ``docs/reference/cli.md``
(``reference``) come from those declarations; ``config_reference`` renders ``docs/reference/config.md`` from
``configs/base.py``."""
