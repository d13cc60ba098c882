from memdyn.cli.main import run

run()
