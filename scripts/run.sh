#!/usr/bin/env bash
# Sets up (scripts/setup.sh), builds lorad in release mode and runs it on the default model, listening on
# ./lorad.sock (override with LORAD_SOCKET). Extra arguments go to `lorad serve`.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=$(scripts/setup.sh)
swift build -c release
SOCKET="${LORAD_SOCKET:-$PWD/lorad.sock}"
echo "lorad: serving $MODEL on $SOCKET" >&2
exec "$(swift build -c release --show-bin-path)/lorad" serve --model "$MODEL" --socket "$SOCKET" "$@"
