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

# Tiers in the order that fails fastest: seconds of unit tests before minutes of real processes. The unit
# tier runs in two workers (pytest-xdist: its tests share nothing but the data cache, which is safe for
# concurrent use); the distributed and integration tiers one test at a time, since several of them
# measure time and energy on the machine and the integration tests share one Slurm cluster.
test: setup horovod
	.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 tests/unit
	.venv/bin/python -m pytest -q -p no:cacheprovider --durations=25 tests/distributed tests/integration

# The three headline benchmarks (bench/README.md has every benchmark and what it measures), each with
# its own defaults; `make bench BENCH_ARGS=--smoke` runs them for a few steps, as the test suite does.
bench: setup horovod
	.venv/bin/python bench/throughput.py $(BENCH_ARGS)
	.venv/bin/python bench/backends.py $(BENCH_ARGS)
	.venv/bin/python bench/energy.py $(BENCH_ARGS)
