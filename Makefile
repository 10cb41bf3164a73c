# The two commands of the README: `make demo` and `make test`. Both install what they need.
.PHONY: demo demo-deps test check deps lint typecheck unit integration system tests fast \
	deploy-check bench

VENV := .venv/bin

deps:
	@bash scripts/install-deps.sh

# The demo needs only redis-server and the venv (no PostgreSQL, Prometheus or dev tools).
demo-deps:
	@bash scripts/install-deps.sh --demo

demo: demo-deps
	$(VENV)/creditgate demo

lint: deps
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

typecheck: deps
	$(VENV)/mypy

# The tests by level (CONTRIBUTING.md): unit needs no server at all, integration runs
# real Redis/PostgreSQL/SQLite in-process, system runs subprocesses, the whole gateway
# over sockets and the browser. One line per test file, failures in full at the end.
unit: deps
	$(VENV)/pytest -p no:cacheprovider tests/unit

integration: deps
	$(VENV)/pytest -p no:cacheprovider tests/integration

system: deps
	$(VENV)/pytest -p no:cacheprovider tests/system

# All levels in one pytest run (one set of session servers).
tests: deps
	$(VENV)/pytest -p no:cacheprovider tests

# The fast subset of every level: tests that need no PostgreSQL and no Redis Cluster.
fast: deps
	$(VENV)/pytest -p no:cacheprovider -m "not postgres and not cluster and not slow" tests

deploy-check: deps
	bash scripts/check-deploy.sh

# Everything CI runs, in one command.
test: deps lint typecheck deploy-check tests

# Before a commit: lint, types and the fast tests.
check: deps lint typecheck fast

bench: deps
	@bash scripts/install-deps.sh --bench
	$(VENV)/python -m bench.admission
	$(VENV)/python -m bench.flush
	$(VENV)/python -m bench.proxy
