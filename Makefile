# The two commands of the README: `make demo` and `make test`. Both install what they need.
.PHONY: demo demo-deps test check deps lint typecheck unit unit-fast deploy-check bench

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

# One line per test file with its progress, failures in full at the end.
unit: deps
	$(VENV)/pytest -p no:cacheprovider

# The fast subset: tests that need no PostgreSQL and no Redis Cluster.
unit-fast: deps
	$(VENV)/pytest -p no:cacheprovider -m "not postgres and not cluster and not slow"

deploy-check: deps
	bash scripts/check-deploy.sh

# Everything CI runs, in one command.
test: deps lint typecheck deploy-check unit

# Before a commit: lint, types and the fast tests.
check: deps lint typecheck unit-fast

bench: deps
	@bash scripts/install-deps.sh --bench
	$(VENV)/python bench/admission.py
	$(VENV)/python bench/flush.py
	$(VENV)/python bench/proxy.py
