from memdyn.main import run

run()
