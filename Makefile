# The two commands of the README: `make demo` and `make test`. Both install what they need.
.PHONY: demo test deps lint typecheck unit deploy-check bench

VENV := .venv/bin

deps:
	@bash scripts/install-deps.sh

demo: deps
	$(VENV)/creditgate demo

lint: deps
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .

typecheck: deps
	$(VENV)/mypy

unit: deps
	$(VENV)/pytest -q -p no:cacheprovider

deploy-check: deps
	bash scripts/check-deploy.sh

# Everything CI runs, in one command.
test: deps lint typecheck deploy-check unit

bench: deps
	@bash scripts/install-deps.sh --bench
	$(VENV)/python bench/admission.py
	$(VENV)/python bench/flush.py
	$(VENV)/python bench/proxy.py
