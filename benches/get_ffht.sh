#!/usr/bin/env bash
# Fetches FFHT's C sources (FALCONN-LIB/FFHT, MIT), the peer `fwht_bench` builds and times beside the crate, from
# PyPI: the sdist of `ffht-unofficial` 0.3 holds them under FFHT-unofficial-0.3/ffht/. pip needs numpy and pybind11
# to read that sdist's metadata, so they go into a throw-away virtual environment.
#
#   benches/get_ffht.sh [DEST]        # DEST defaults to target/ffht-src in the repository
#   cargo run --release --example fwht_bench -- --only ffht   # finds it there (or --ffht-src DEST, FFHT_SRC=DEST)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/target/ffht-src}
venv=${FFHT_VENV:-${TMPDIR:-/tmp}/ffht-venv}
mkdir -p "$dest"
python3 -m venv "$venv"
"$venv/bin/pip" install -q numpy pybind11 setuptools wheel
"$venv/bin/pip" download -q --no-deps --no-build-isolation --no-binary :all: ffht-unofficial==0.3 -d "$dest"
tar -xzf "$dest/FFHT-unofficial-0.3.tar.gz" -C "$dest"
echo "FFHT sources in $dest/FFHT-unofficial-0.3/ffht"
