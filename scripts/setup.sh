#!/usr/bin/env bash
# Idempotent development/CI setup: system packages for FUSE and overlay tests,
# a virtualenv in .venv and an editable install of the package with its test extra.
# Safe to run repeatedly; needs root (or sudo-less root) only when packages are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# The interpreter of .venv: $PYTHON if set, else the distribution's /usr/bin/python3, else python3 on
# PATH. Debian's links libpython into the executable. In one built with --enable-shared (pyenv's build
# here) libpython is position-independent code whose calls within itself go through the PLT; it ran
# the daemon's handlers with 20-30% more CPU a request (untar through the engine: 205-227 against
# 147-187 us of user CPU a file) and started 4-6 ms slower. A .venv made from another interpreter is
# made again.
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
        PYTHON=/usr/bin/python3
    fi
fi

log() { printf 'setup: %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------
want=(fuse3 libfuse3-dev pkg-config attr fuse-overlayfs umoci)
# The container-engine tests (tests/container) and benchmarks drive the real clients: podman and
# buildah with runc (crun refuses these machines' cgroup v1 hybrid mode), newuidmap/newgidmap for
# rootless podman, and the kernel's NFS server for a shared read-only image store.
want+=(podman buildah runc uidmap nfs-kernel-server)
# Other real clients the mount tests run on a union (tests/mount/test_clients.py).
want+=(git rsync)
# pyfuse3 (the second FUSE backend, in the test extra) is built from source: it needs a C compiler
# and the Python headers; a Debian system Python needs python3-venv for `-m venv`.
if ! command -v gcc >/dev/null 2>&1; then want+=(gcc); fi
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then want+=(python3-venv); fi
if ! "$PYTHON" -c 'import os, sysconfig, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
    want+=(python3-dev)
fi

missing=()
for pkg in "${want[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then missing+=("$pkg"); fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        log "missing Debian packages: ${missing[*]} (run as root to install them)"
        exit 1
    fi
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
fi

# --- virtualenv -------------------------------------------------------------
base_of() { "$1" -c 'import os, sys; print(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))' 2>/dev/null; }
if [[ -x .venv/bin/python ]]; then
    have=$(base_of .venv/bin/python || true) want_py=$(base_of "$PYTHON" || true)
    if [[ $have != "$want_py" ]]; then
        log ".venv is made from ${have:-an interpreter that does not run}, not $want_py: making it again"
        rm -rf .venv
    fi
fi
if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv with $(command -v "$PYTHON")"
    rm -rf .venv
    "$PYTHON" -m venv .venv
fi

# Reinstall only when the project metadata changed since the last install.
stamp=.venv/.unionfs-installed
if [[ ! -f $stamp ]] || [[ pyproject.toml -nt $stamp ]] || ! .venv/bin/python -c 'import unionfs, pyfuse3, trio, pytest, hypothesis, pytest_timeout, ruff, mypy' >/dev/null 2>&1; then
    log "installing unionfs[test] into .venv"
    # compat mode: a .pth line puts this checkout on sys.path. The default (a meta-path finder module)
    # costs every Python start, and container engines exec pyunionfs for every mount.
    PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip install -qq -e '.[test]' \
        --config-settings editable_mode=compat </dev/null
    touch "$stamp"
fi

# setuptools is not needed once the package is installed (pip builds it in an isolated environment),
# and its distutils-precedence.pth imports _distutils_hack at every start of the interpreter:
# `startup.py -n 20`, three rounds in turns, exec -> mount 29.3/27.2/28.3 ms with it, 26.8/25.2/27.4
# without. Every container mount execs pyunionfs.
if .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("setuptools") is None)' 2>/dev/null; then
    log "removing setuptools from .venv (its .pth costs every start)"
    PIP_DISABLE_PIP_VERSION_CHECK=1 .venv/bin/python -m pip uninstall -y -qq setuptools </dev/null
fi

# Cached bytecode for the package: an editable install compiles nothing, and with
# PYTHONDONTWRITEBYTECODE=1 (set on these machines) every start would compile unionfs again.
# compileall rewrites only what changed since the last run.
.venv/bin/python -m compileall -q unionfs >/dev/null
