#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh), builds release, and runs the whole test suite.
# Tests run in release mode: several of them run the real model.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=$(scripts/setup.sh)
export LORAD_MODEL="${LORAD_MODEL:-$MODEL}"
export LORAD_REFERENCE_DIR="${LORAD_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}"

# One release build with test support; it also builds the lorad and loractl executables the tests start.
swift build -c release --build-tests
BIN="$(swift build -c release --show-bin-path)"
export LORAD_BIN="$BIN/lorad"
export LORACTL_BIN="$BIN/loractl"
# OpenBLAS 0.3.21 falls back to SSE3 "Prescott" kernels on CPUs newer than itself; lorad re-executes itself with
# OPENBLAS_CORETYPE set (Runtime/Quant/OpenBLASKernels.swift), the test binary does not, so set it here the same way
# (flags in /proc/cpuinfo are the ones the kernel enabled).
if [[ -z "${OPENBLAS_CORETYPE:-}" ]]; then
    FLAGS=" $(grep -m1 '^flags' /proc/cpuinfo || true) "
    if [[ $FLAGS == *" avx512f "* && $FLAGS == *" avx512bw "* && $FLAGS == *" avx512vl "* && $FLAGS == *" avx512dq "* ]]; then
        export OPENBLAS_CORETYPE=SkylakeX
    elif [[ $FLAGS == *" avx2 "* && $FLAGS == *" fma "* ]]; then
        export OPENBLAS_CORETYPE=Haswell
    fi
fi
swift test -c release --skip-build "$@"
