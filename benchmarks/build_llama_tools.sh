#!/usr/bin/env bash
# Build llama.cpp's own command-line tools (llama-perplexity, llama-bench,
# llama-quantize, llama-imatrix) from the very same llama.cpp commit that the
# installed llama-cpp-python vendors, so the benchmarks can compare
# pytest-quantcheck's numbers and timings with llama.cpp's reference tools on
# equal terms: same sources, and the same cmake defaults llama-cpp-python uses
# for its libllama (Release, shared libs, GGML_NATIVE default ON, CPU backend).
#
# Usage: benchmarks/build_llama_tools.sh [DEST]
#   DEST  default ${QUANTCHECK_LLAMA_TOOLS:-$HOME/.cache/pytest-quantcheck/llama-tools};
#         binaries go to DEST/bin, the cmake build tree to DEST/build.
# Environment:
#   PYTHON                    interpreter with llama-cpp-python installed (default python3)
#   QUANTCHECK_LLAMA_VERSION  build for this version instead of the installed one
#   QUANTCHECK_LLAMA_SRC      an already extracted llama-cpp-python sdist (skips the download)
#   CMAKE_ARGS                extra cmake options, e.g. the ones llama-cpp-python was built with
#   JOBS                      parallel compile jobs (default 2)
set -euo pipefail

DEST=${1:-${QUANTCHECK_LLAMA_TOOLS:-$HOME/.cache/pytest-quantcheck/llama-tools}}
PYTHON=${PYTHON:-python3}
JOBS=${JOBS:-2}
TOOLS=(llama-perplexity llama-bench llama-quantize llama-imatrix)

VERSION=${QUANTCHECK_LLAMA_VERSION:-$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')}

if [[ -x $DEST/bin/llama-perplexity && "$(cat "$DEST/VERSION" 2>/dev/null)" == "$VERSION" ]]; then
    echo "llama.cpp tools for llama-cpp-python $VERSION already built: $DEST/bin"
    exit 0
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# 1. Sources: the llama-cpp-python sdist of the installed version (pip reaches the registry).
SRC=${QUANTCHECK_LLAMA_SRC:-}
if [[ -z $SRC ]]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$WORK" "llama-cpp-python==$VERSION"
    mkdir "$WORK/src"
    tar -xzf "$WORK"/*.tar.gz -C "$WORK/src" --strip-components=1
    SRC=$WORK/src
fi
grep -qx "Version: $VERSION" "$SRC/PKG-INFO" || { echo "error: $SRC is not llama-cpp-python $VERSION" >&2; exit 1; }

# 2. Configure llama.cpp standalone with llama-cpp-python's settings (see its CMakeLists.txt:
#    BUILD_SHARED_LIBS=On, LLAMA_BUILD_COMMON=ON, LLAMA_CURL=OFF, everything else default),
#    plus the tools; nothing that needs the network (curl/OpenSSL, server, web UI).
#    CMAKE_BUILD_RPATH_USE_ORIGIN makes the binaries find their libs via $ORIGIN after copying.
rm -rf "$DEST/build" "$DEST/bin" "$DEST/VERSION"
read -ra EXTRA <<< "${CMAKE_ARGS:-}"
cmake -S "$SRC/vendor/llama.cpp" -B "$DEST/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DCMAKE_BUILD_RPATH_USE_ORIGIN=ON \
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    "${EXTRA[@]}"

# 3. Build only the four tools, then copy them with their shared libraries to DEST/bin.
cmake --build "$DEST/build" --config Release -j "$JOBS" --target "${TOOLS[@]}"
mkdir -p "$DEST/bin"
for tool in "${TOOLS[@]}"; do cp "$DEST/build/bin/$tool" "$DEST/bin/"; done
cp -P "$DEST"/build/bin/lib*.so* "$DEST/bin/"

# 4. Smoke test: every tool loads its libraries and prints its usage (llama-quantize exits 1 on --help).
for tool in "${TOOLS[@]}"; do
    out=$("$DEST/bin/$tool" --help 2>&1 || true)
    grep -qi usage <<< "$out" || { echo "error: $tool --help failed: $out" >&2; exit 1; }
done
echo "$VERSION" > "$DEST/VERSION"
echo "llama.cpp tools for llama-cpp-python $VERSION: $DEST/bin"
