# The two commands a fresh machine needs (see README):
#   make demo   set up, then train the default recipe end to end
#   make test   set up (Horovod included), then run every test tier
.PHONY: setup horovod demo test bench

setup:
	bash scripts/setup.sh

# Optional for users (backend: horovod), always built for the tests; cached after the first build.
horovod: setup
	bash scripts/build-horovod.sh

demo: setup
	.venv/bin/orch run

# Tiers in the order that fails fastest: seconds of unit tests before minutes of real processes,
# on two pytest workers (a test waits on processes as much as it computes); a module's tests stay on
# one worker, so its fixtures (the Slurm cluster among them) are built once. Then, alone, the few
# tests that measure the whole machine.
PYTEST = .venv/bin/python -m pytest -q -p no:cacheprovider
test: setup horovod
	$(PYTEST) -n 2 --dist loadscope --durations=25 -m "not serial" tests/unit tests/integration tests/distributed
	$(PYTEST) -m serial tests

bench: setup horovod
	.venv/bin/python bench/throughput.py
	.venv/bin/python bench/backends.py
	.venv/bin/python bench/energy.py
