#!/usr/bin/env bash
# Prove that the real-model tests pass when llama.cpp is built for other x86 instruction sets than
# this machine's native one. `make test` builds llama-cpp-python with llama.cpp's default
# GGML_NATIVE=ON (-march=native: AVX-512 on a machine that has it), so every kernel the tests
# exercise is the AVX-512 one; users' wheels are often AVX2-only or plain SSE builds, whose
# kernels round differently. For each build named on the command line this script
#   1. builds the installed llama-cpp-python version from source, with GGML_NATIVE=OFF and the
#      instruction sets of that build, into a throwaway virtual environment (never into pip's
#      wheel cache, where the main .venv could pick up a non-native wheel),
#   2. installs this project into it (editable, without rebuilding llama-cpp-python),
#   3. prints llama.cpp's system info to show which instruction sets are compiled in, and fails
#      if AVX-512 is one of them,
#   4. runs the real-model tests (pytest -m real) and the demo suite with that interpreter, on a
#      quantcheck cache of its own (demo models built with different kernels never mix),
# and ends with one summary line per build.
#
# Builds (llama.cpp ggml options of llama-cpp-python 0.3.x; nothing here needs GGML_BACKEND_DL or
# GGML_CPU_ALL_VARIANTS, one CPU backend is compiled with exactly the listed flags):
#   avx2  x86-64-v3 level: SSE4.2, AVX, AVX2, FMA, F16C, BMI2; no AVX-512
#   sse   x86-64-v2 level: SSE4.2 only; no AVX, AVX2, FMA, F16C, BMI2, AVX-512
#
# Usage: scripts/check_other_isa.sh [BUILD...]     (default: avx2 sse)
#   One llama-cpp-python build takes about 5-8 minutes on 2 cores; a complete environment is
#   reused on the next run (a stamp records the version, CMAKE_ARGS and pyproject.toml).
# Environment:
#   PYTHON              the project's interpreter (default .venv/bin/python); the version of
#                       llama-cpp-python installed there is the one built. The script waits until
#                       .venv/.installed exists when PYTHON is the default (make .venv/.installed).
#   QUANTCHECK_ISA_DIR  where the environments live (default $HOME/.cache/pytest-quantcheck/isa);
#                       build NAME gets NAME/venv, NAME/cache (QUANTCHECK_CACHE_DIR), NAME/logs.
#   QUANTCHECK_ISA_DEMO 0 to skip the demo suite (default 1)
#   QUANTCHECK_ISA_WAIT seconds to wait for .venv/.installed (default 3600)
#   JOBS                parallel compile jobs (default 2)
# Two runs on one build wait for each other (flock on NAME/lock); different builds run side by side.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

PYTHON=${PYTHON:-.venv/bin/python}
ISA_DIR=${QUANTCHECK_ISA_DIR:-$HOME/.cache/pytest-quantcheck/isa}
RUN_DEMO=${QUANTCHECK_ISA_DEMO:-1}
WAIT=${QUANTCHECK_ISA_WAIT:-3600}
JOBS=${JOBS:-2}
if [[ $# -gt 0 ]]; then BUILDS=("$@"); else BUILDS=(avx2 sse); fi

OFF_512="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF"
OFF_512+=" -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF"
OFF_512+=" -DGGML_AMX_BF16=OFF -DGGML_BACKEND_DL=OFF -DGGML_CPU_ALL_VARIANTS=OFF"
declare -A CMAKE=(
    [avx2]="$OFF_512 -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
    [sse]="$OFF_512 -DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
)
# What llama_print_system_info must report for each build (it lists only the enabled features).
declare -A EXPECT=(
    [avx2]="AVX=1 AVX2=1 FMA=1 F16C=1 AVX512=0"
    [sse]="AVX=0 AVX2=0 FMA=0 F16C=0 AVX512=0"
)
SHOWN=(SSE3 SSSE3 AVX AVX2 FMA F16C BMI2 AVX512 AVX512_VNNI AVX512_BF16)

for name in "${BUILDS[@]}"; do
    [[ -n ${CMAKE[$name]:-} ]] || { echo "error: unknown build '$name' (known: ${!CMAKE[*]})" >&2; exit 2; }
done

# 0. The main environment: wait for `make .venv/.installed`, then read the version to build.
if [[ $PYTHON == .venv/bin/python ]]; then
    waited=0
    until [[ -e .venv/.installed ]]; do
        ((waited == 0)) && echo "waiting for $ROOT/.venv/.installed (make .venv/.installed) ..."
        ((waited < WAIT)) || { echo "error: .venv/.installed still missing after ${WAIT}s" >&2; exit 1; }
        sleep 10
        waited=$((waited + 10))
    done
fi
VERSION=$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
PYPROJECT_SHA=$(sha256sum pyproject.toml | cut -d' ' -f1)
# The project's dependencies (runtime and dev extra) without llama-cpp-python, which is built here.
mapfile -t DEPS < <("$PYTHON" - <<'EOF'
import re, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
for req in p["dependencies"] + p["optional-dependencies"]["dev"]:
    if re.split(r"[ <>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-") != "llama-cpp-python":
        print(req)
EOF
)

# Prints the system info line, then one "NAME=0|1" word per feature in SHOWN.
system_info() {
    "$1" - "${SHOWN[@]}" <<'EOF'
import sys
import llama_cpp
info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
on = {f.split("=")[0].strip() for part in info.split("|") for f in [part.split(":")[-1]] if f.strip().endswith("= 1")}
print(info)
print(" ".join(f"{name}={int(name in on)}" for name in sys.argv[1:]))
EOF
}

# The project's own interpreter must still import the project from this checkout's src/.
check_main_venv() {
    local where
    where=$("$PYTHON" -c 'import pytest_quantcheck, os; print(os.path.dirname(os.path.realpath(pytest_quantcheck.__file__)))')
    [[ $where == "$ROOT/src/pytest_quantcheck" ]] || {
        echo "error: $PYTHON imports pytest_quantcheck from $where, not $ROOT/src" >&2; return 1; }
}

# Records a failed build in the summary; the caller goes on with the next build.
fail() { SUMMARY+=("$name: FAILED: $1"); FAILED=1; echo "error: $name: $1" >&2; }

# Last non-empty line of a pytest log, without the ===== decoration.
final_line() { grep -v '^[[:space:]]*$' "$1" | tail -n 1 | sed -e 's/^=* *//' -e 's/ *=*$//'; }

echo "llama-cpp-python $VERSION; builds: ${BUILDS[*]}; environments under $ISA_DIR"
native=$(system_info "$PYTHON")
echo "native ($PYTHON): ${native%%$'\n'*}"
check_main_venv

SUMMARY=()
FAILURES=()
FAILED=0
for name in "${BUILDS[@]}"; do
    dir=$ISA_DIR/$name
    venv=$dir/venv
    py=$venv/bin/python
    logs=$dir/logs
    mkdir -p "$logs" "$dir/cache"
    echo
    echo "=== $name: CMAKE_ARGS=${CMAKE[$name]}"
    # One run per build at a time: a second one would wipe this one's --basetemp and logs.
    [[ -z ${lock:-} ]] || exec {lock}>&-
    exec {lock}>"$dir/lock"
    flock -n "$lock" || { echo "waiting for another run on $dir to finish ..."; flock "$lock"; }
    rm -f "$logs/real.log" "$logs/demo.log"

    # 1. llama-cpp-python from source, never from or into pip's cache.
    stamp="llama-cpp-python==$VERSION CMAKE_ARGS=${CMAKE[$name]}"
    if [[ -x $py && "$(cat "$dir/llama.stamp" 2>/dev/null)" == "$stamp" ]]; then
        echo "reusing $venv (llama-cpp-python $VERSION already built for $name)"
    else
        rm -rf "$venv" "$dir/llama.stamp" "$dir/project.stamp"
        "$PYTHON" -m venv "$venv"
        "$py" -m pip install --quiet --no-cache-dir --upgrade pip
        echo "building llama-cpp-python $VERSION for $name (log: $logs/build.log) ..."
        start=$SECONDS
        if ! CMAKE_ARGS=${CMAKE[$name]} CMAKE_BUILD_PARALLEL_LEVEL=$JOBS \
            "$py" -m pip install --verbose --no-cache-dir --no-binary llama-cpp-python \
            "llama-cpp-python==$VERSION" > "$logs/build.log" 2>&1; then
            tail -n 30 "$logs/build.log" >&2
            fail "llama-cpp-python build failed, see $logs/build.log"
            continue
        fi
        echo "built in $((SECONDS - start))s"
        # The compiler lines must not target this machine or AVX-512.
        if grep -Eq -- '-march=native|-mavx512' "$logs/build.log"; then
            fail "the build used -march=native or -mavx512*, see $logs/build.log"
            continue
        fi
        echo "$stamp" > "$dir/llama.stamp"
    fi

    # 2. The project, editable, plus its dependencies except llama-cpp-python.
    if [[ "$(cat "$dir/project.stamp" 2>/dev/null)" != "$PYPROJECT_SHA" ]]; then
        if ! { "$py" -m pip install --quiet "${DEPS[@]}" && "$py" -m pip install --quiet --no-deps -e .; } \
            > "$logs/project.log" 2>&1; then
            tail -n 30 "$logs/project.log" >&2
            fail "installing the project failed, see $logs/project.log"
            continue
        fi
        echo "$PYPROJECT_SHA" > "$dir/project.stamp"
    fi
    check_main_venv || { fail "the main environment no longer imports the project from src/"; continue; }
    got=$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
    [[ $got == "$VERSION" ]] || { fail "$venv has llama-cpp-python $got, not $VERSION"; continue; }

    # 3. Which instruction sets the build really has.
    info=$(system_info "$py")
    flags=${info##*$'\n'}
    echo "system info: ${info%%$'\n'*}"
    echo "flags: $flags"
    wrong=()
    read -ra wants <<< "${EXPECT[$name]}"
    for want in "${wants[@]}"; do
        [[ " $flags " == *" $want "* ]] || wrong+=("$want")
    done
    if ((${#wrong[@]})); then
        fail "[$flags] is not the $name build: expected ${wrong[*]}"
        continue
    fi

    # 4. The tests, with this build's interpreter and a quantcheck cache of its own.
    export QUANTCHECK_CACHE_DIR=$dir/cache
    rc=0
    echo "--- $name: pytest -m real (log: $logs/real.log)"
    "$py" -m pytest -m real -p no:cacheprovider -q --basetemp="$dir/tmp" 2>&1 | tee "$logs/real.log" || rc=1
    result="real: $(final_line "$logs/real.log")"
    if [[ $RUN_DEMO != 0 ]]; then
        echo "--- $name: demo suite (log: $logs/demo.log)"
        (cd examples/demo && "$py" -m pytest --quant-baseline -q -p no:cacheprovider) 2>&1 |
            tee "$logs/demo.log" || rc=1
        result+="; demo: $(final_line "$logs/demo.log")"
    fi
    unset QUANTCHECK_CACHE_DIR
    for log in "$logs"/{real,demo}.log; do
        [[ -f $log ]] || continue
        mapfile -t -O "${#FAILURES[@]}" FAILURES < <(grep -E '^(FAILED|ERROR) ' "$log" | sed "s|^|$name/$(basename "$log" .log): |")
    done
    if ((rc)); then
        fail "[$flags] $result"
    else
        SUMMARY+=("$name: ok: [$flags] $result")
    fi
done

check_main_venv
echo
echo "=== summary (llama-cpp-python $VERSION; logs under $ISA_DIR/<build>/logs)"
printf '%s\n' "${SUMMARY[@]}"
((${#FAILURES[@]} == 0)) || printf '%s\n' "${FAILURES[@]}"
exit "$FAILED"
