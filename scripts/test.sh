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
swift test -c release --skip-build "$@"
