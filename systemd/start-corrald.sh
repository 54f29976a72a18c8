#!/usr/bin/env bash
# Start (or stop) corrald on a dev host: through systemd when it is PID 1,
# otherwise as a background process with its stderr in /var/log/corral/.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
sock=/run/corral.sock
pidfile=/run/corral/corrald.pid
errlog=/var/log/corral/corrald.stderr

running() { [ -S "$sock" ] && "$repo/.venv/bin/python" -c "
from corral.client.connection import Client; Client('$sock', timeout=2).call('hello')" >/dev/null 2>&1; }

if [ "${1:-start}" = stop ]; then
    if [ "$(cat /proc/1/comm)" = systemd ] && systemctl is-active -q corrald 2>/dev/null; then
        systemctl stop corrald
    elif [ -f "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    fi
    exit 0
fi

if running; then
    echo "corrald is already running ($sock)"
    exit 0
fi
if [ "$(cat /proc/1/comm)" = systemd ]; then
    sed "s|^ExecStart=/usr/sbin/corrald|ExecStart=$repo/.venv/bin/corrald|" "$repo/systemd/corrald.service" > /etc/systemd/system/corrald.service
    systemctl daemon-reload
    systemctl start corrald
else
    mkdir -p /run/corral /var/log/corral
    echo "starting corrald (no systemd here; stderr in $errlog)"
    nohup setsid "$repo/.venv/bin/corrald" >>"$errlog" 2>&1 < /dev/null &
    echo $! > "$pidfile"
fi
for _ in $(seq 1 600); do
    if running; then echo "corrald is up ($sock)"; exit 0; fi
    if [ -f "$pidfile" ] && ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "corrald failed to start:"; tail -20 "$errlog"; exit 1
    fi
    sleep 0.2
done
echo "corrald did not come up in 120 s"; tail -20 "$errlog" 2>/dev/null; exit 1
