# The two commands of the README: `make demo` and `make test`. Both install what they need.
.PHONY: demo demo-deps test check deps lint typecheck unit integration system tests fast \
	deploy-check bench lock lock-upgrade replay-dead-letters

VENV := .venv/bin
# The suites of more than one file run on PYTEST_WORKERS processes (pytest-xdist), each
# with its own servers and temporary directories; worksteal keeps a file's tests together
# on one worker until the other runs out and takes half of what is left.
# `make tests PYTEST_WORKERS=0` runs everything in this one process. Three on the 2-core
# CI machine: the tests wait on sockets, servers and subprocesses more than they compute
# (at -n 2 about 15 CPU-minutes took 12 minutes on 2 cores, 60% busy); a third process
# runs while the other two wait.
PYTEST_WORKERS ?= 3
# The tests write bytecode even where PYTHONDONTWRITEBYTECODE is set (the CI machine sets
# it): else each pytest worker rewrote every test module's asserts again, and each Python
# process the tests start (creditgate serve and its workers, the flusher, the CLI)
# compiled gateway/, meter/ and config/ from source again (~2.5 s of CPU each).
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(VENV)/pytest -p no:cacheprovider
XDIST = -n $(PYTEST_WORKERS) --dist worksteal

deps:
	@bash scripts/install-deps.sh

# requirements.lock: every runtime dependency (pyproject.toml's `dependencies`, and theirs)
# at an exact version with the hashes of its files. The image installs exactly that
# (--require-hashes --no-deps) and `make deps` installs the same versions into .venv as
# constraints, so what the tests run on is what ships. tests/unit/test_lock.py fails when
# pyproject.toml and the lock disagree.
#   make lock          after editing pyproject.toml's dependencies: keeps every pin that
#                      still satisfies it, resolves only what changed
#   make lock-upgrade  the newest versions pyproject.toml allows (then `make deps test`)
# The lock holds for every Python >= 3.11 and platform (--universal: a dependency of
# some of them only carries its marker). uv runs from a venv of its own, .venv-lock,
# pinned here: it writes the lock, and `make deps` installs .venv with it (pip where uv
# cannot be had); the image needs neither.
UV_VERSION := 0.13.9
LOCK_UV := .venv-lock/bin/uv
LOCK := $(LOCK_UV) pip compile pyproject.toml --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock" --quiet -o requirements.lock

lock: lock-tool
	$(LOCK)

lock-upgrade: lock-tool
	$(LOCK) --upgrade

.PHONY: lock-tool
lock-tool:
	@$(LOCK_UV) --version 2> /dev/null | grep -q '^uv $(UV_VERSION) ' || { \
		python3 -m venv .venv-lock && \
		.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check \
			uv==$(UV_VERSION); }

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
# over sockets and the browser. A dot per test, failures in full at the end.
unit: deps
	$(PYTEST) tests/unit

integration: deps
	$(PYTEST) $(XDIST) tests/integration

system: deps
	$(PYTEST) $(XDIST) tests/system

# All levels in one pytest run (one set of session servers per worker).
tests: deps
	$(PYTEST) $(XDIST) tests

# The fast subset of every level: tests that need no PostgreSQL and no Redis Cluster.
fast: deps
	$(PYTEST) $(XDIST) -m "not postgres and not cluster and not slow" tests

deploy-check: deps
	bash scripts/check-deploy.sh

# Everything CI runs, in one command. The three checks run side by side (each is one
# process, mostly on one core), their output kept whole per check; the tests only once
# all three passed.
test: deps
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck deploy-check
	@$(MAKE) --no-print-directory tests

# Before a commit: lint, types and the fast tests.
check: deps lint typecheck fast

# Write every quarantined flush batch (`flush_dead_letters`) this version can read, once;
# exits 1 listing those that stay. Each flusher pass does the same by itself (a page per
# pass), so this is for a store no flusher of this version runs against yet. Settings as
# for `creditgate serve` (CREDITGATE_STORE_URL, ...).
replay-dead-letters: deps
	$(VENV)/creditgate flush --replay-dead-letters

bench: deps
	@bash scripts/install-deps.sh --bench
	$(VENV)/python -m bench.admission
	$(VENV)/python -m bench.flush
	$(VENV)/python -m bench.proxy
