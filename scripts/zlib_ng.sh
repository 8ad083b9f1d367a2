#!/usr/bin/env bash
# Build zlib-ng in zlib-compat mode (a drop-in libz.so.1) into the environment, where the sandbox's
# workers find and preload it (sandbox/deflate.py): PNG deflate about 2x faster in the code they
# run, with the same pixels (docs/sandbox.md, "zlib").
#
#   bash scripts/zlib_ng.sh [VENV]         # ~20 s the first time, instant afterwards
#
# The source is zlib-ng as vendored in the python-zlib-ng sdist on PyPI (package registries are
# all these machines reach), pinned by version and sha256. It is built with run-time CPU
# detection, so one build serves every x86-64 node. Without a C compiler or cmake it says so and
# exits 0: the sandbox then uses the system zlib and reports that (Sandbox.zlib).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
SDIST_VERSION="1.1.0"          # python-zlib-ng; it vendors zlib-ng 2.3.3
SDIST_SHA256="08a3a8468d4f130e3dc80d28ec42fcc7a878a57dfed616233e791066327d78a3"
DEST="$VENV/lib/zlib-ng"
STAMP="$DEST/.built-$SDIST_VERSION"

if [[ -f "$STAMP" && -f "$DEST/libz.so.1" ]]; then
    exit 0
fi
for tool in cc cmake; do
    if ! command -v "$tool" >/dev/null; then
        echo "zlib-ng not built: no $tool on PATH; the sandbox uses the system zlib (PNG work ~2x slower)" >&2
        exit 0
    fi
done

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$VENV/bin/python" -m pip download --quiet --no-deps --no-binary :all: -d "$WORK" \
    "zlib-ng==$SDIST_VERSION" 2> >(grep -v "is ignored: it is neither" >&2)
SDIST="$WORK/zlib_ng-$SDIST_VERSION.tar.gz"
echo "$SDIST_SHA256  $SDIST" | sha256sum --check --quiet
tar -xzf "$SDIST" -C "$WORK"
SRC="$WORK/zlib_ng-$SDIST_VERSION/src/zlib_ng/zlib-ng"
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DZLIB_COMPAT=ON \
    -DBUILD_SHARED_LIBS=ON -DZLIB_ENABLE_TESTS=OFF -DZLIBNG_ENABLE_TESTS=OFF -DWITH_GTEST=OFF \
    >"$WORK/cmake.log" 2>&1 || { cat "$WORK/cmake.log" >&2; exit 1; }
cmake --build "$WORK/build" -j "$(nproc)" >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; exit 1; }

# Install atomically: a worker starting meanwhile sees the old state or the new, never half a file.
mkdir -p "$DEST"
cp "$(readlink -f "$WORK/build/libz.so.1")" "$DEST/.libz.so.1.tmp"
mv "$DEST/.libz.so.1.tmp" "$DEST/libz.so.1"
rm -f "$DEST"/.built-*
touch "$STAMP"
echo "zlib-ng built: $DEST/libz.so.1"
