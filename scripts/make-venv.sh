#!/usr/bin/env bash
# Create a virtual environment with pip in it, on a machine whose interpreter may lack a working
# ensurepip (seen on a CI machine: `python3 -m venv` stopped with "ensurepip ... returned
# non-zero exit status 1").
#
#   scripts/make-venv.sh PYTHON DIR
#
# Tried in order, each from scratch:
#   1. PYTHON -m venv DIR                     (the usual way; pip from ensurepip)
#   2. PYTHON -m venv --without-pip DIR, then the interpreter's own pip installs pip into it
#      (pip >= 22.3: `pip --python DIR/bin/python install pip`)
#   3. as root on Debian: install python3-venv and python3-pip, then 1 and 2 again
set -uo pipefail

PYTHON=${1:?usage: make-venv.sh PYTHON DIR}
DIR=${2:?usage: make-venv.sh PYTHON DIR}

log() { echo "make-venv: $*" >&2; }

has_pip() { "$DIR/bin/python" -m pip --version >/dev/null 2>&1; }

with_ensurepip() {
    rm -rf "$DIR"
    "$PYTHON" -m venv "$DIR" && has_pip
}

with_outer_pip() {
    rm -rf "$DIR"
    "$PYTHON" -m venv --without-pip "$DIR" \
        && "$PYTHON" -m pip --python "$DIR/bin/python" install --quiet pip \
        && has_pip
}

try_both() {
    with_ensurepip && return 0
    log "'$PYTHON -m venv $DIR' did not give a venv with pip; installing pip into it instead"
    with_outer_pip
}

try_both && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian's python3-venv and python3-pip, then trying again"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip >/dev/null \
        || { apt-get update -q >/dev/null \
             && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv python3-pip >/dev/null; }
    try_both && exit 0
fi

rm -rf "$DIR"
log "could not create a virtual environment with pip in $DIR using $PYTHON"
exit 1
