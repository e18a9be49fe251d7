# The two commands a fresh machine needs (see README):
#   make demo   set up, then train the default recipe end to end
#   make test   set up, then run every test tier
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/orch run

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

bench: setup
	.venv/bin/python bench/throughput.py
