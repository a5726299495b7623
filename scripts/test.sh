#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh), builds release, and runs the whole test suite.
# Tests run in release mode: several of them run the real model.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=$(scripts/setup.sh)
export LORAD_MODEL="${LORAD_MODEL:-$MODEL}"
export LORAD_REFERENCE_DIR="${LORAD_REFERENCE_DIR:-$(cd .. && pwd)/shared/reference}"

swift build -c release
export LORAD_BIN="$(swift build -c release --show-bin-path)/lorad"
export LORACTL_BIN="$(swift build -c release --show-bin-path)/loractl"
swift test -c release "$@"
