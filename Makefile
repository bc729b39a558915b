# edgemq — the two commands a newcomer needs: `make cluster-up` and `make test`.
# Both create the virtual environment (.venv, pinned deps from pyproject.toml) if missing.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= cluster.toml
DEVICES ?= 0
RATE ?= 1

.PHONY: venv test test-all lint cluster-up cluster-down cluster-status bench bench-ring bench-buffer bench-compare bench-quick bench-profile bench-tls clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

# The dashboard's chart library comes from the npm registry (package-lock.json), never a CDN.
NODE_STAMP := node_modules/.installed-stamp
$(NODE_STAMP): package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	else echo "npm not found: the dashboard will run without charts (apt-get install nodejs npm)"; fi

venv: $(STAMP) $(NODE_STAMP)

## test: the whole default suite (unit, property, integration with real processes)
test: $(STAMP) $(NODE_STAMP)
	$(PY) -m pytest

## test-all: also the slow soaks and scenarios
test-all: $(STAMP)
	$(PY) -m pytest -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## cluster-up: cloud broker + site plant-1 (3 edge brokers), supervised; DEVICES=200 adds a fleet
cluster-up: $(STAMP) $(NODE_STAMP)
	$(VENV)/bin/edgemq cluster up --config $(CONFIG) --devices $(DEVICES) --device-rate $(RATE)

cluster-down: $(STAMP)
	$(VENV)/bin/edgemq cluster down --config $(CONFIG)

cluster-status: $(STAMP)
	$(VENV)/bin/edgemq cluster status --config $(CONFIG)

bench-ring: $(STAMP)
	$(PY) benchmarks/ring_bench.py

## bench-compare: edgemq vs Mosquitto side by side (issue 9), ~15 min (2 reps); BENCH_ARGS="--big" for 1M drain / 10k idle
bench-compare: $(STAMP)
	$(PY) benchmarks/run_bench.py $(BENCH_ARGS)

## bench-quick: 2-3 minute smoke of the same harness (does not touch BENCHMARKS.md)
bench-quick: $(STAMP)
	$(PY) benchmarks/run_bench.py --quick --no-report

## bench-profile: py-spy profile of the edge node under QoS 1 load -> benchmarks/results/edge-profile.*
bench-profile: $(STAMP)
	$(PY) benchmarks/profile_edge.py

## bench-tls: connects/s and QoS 1 msg/s with TLS on vs off, edgemq and Mosquitto (issue 7), ~3 min
bench-tls: $(STAMP)
	$(PY) benchmarks/tls_bench.py $(BENCH_ARGS)

## bench: every benchmark; results and method in BENCHMARKS.md
bench: bench-ring bench-buffer bench-compare

## bench-buffer: the SQLite buffer alone per durability mode (section in BENCHMARKS.md, results/buffer.json)
bench-buffer: $(STAMP)
	$(PY) benchmarks/buffer_bench.py --report

## simulate-capacity: 100 sites x 10,000 devices by model, from the figures in benchmarks/results/
.PHONY: simulate-capacity
simulate-capacity: $(STAMP)
	$(PY) -m simulations.capacity $(SIM_ARGS)

clean:
	rm -rf run run-secure build *.egg-info

## simulate-failover: kill and restart an edge broker under a fleet; report + plot in simulations/out/
## fuzz: the long hypothesis fuzz run against a real broker process (issue 5)
.PHONY: fuzz
fuzz: $(STAMP)
	$(PY) -m pytest -m slow tests/protocol/test_fuzz.py

.PHONY: simulate-failover
simulate-failover: $(STAMP)
	$(PY) -m simulations.failover

## simulate-outage: cut a site's uplink for 3 min under 1,000 devices; depth/age plot + loss count in simulations/out/
.PHONY: simulate-outage
simulate-outage: $(STAMP)
	$(PY) -m simulations.outage $(SIM_ARGS)
