#!/bin/sh
# Runs inside the VM (started by tests/vm/run_vm.py). Prints the marker
# CORRAL-VMTEST-EXIT=<pytest exit status> as its last line.
set -u
REPO=${CORRAL_REPO:?}; PY=${CORRAL_PY:?}; KVER=$(uname -r)
echo "[guest] kernel $KVER, lsm: $(cat /sys/kernel/security/lsm 2>/dev/null)"
mountpoint -q /sys/kernel/security || mount -t securityfs securityfs /sys/kernel/security
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
grep -q cgroup2 /proc/mounts || { mkdir -p /sys/fs/cgroup; mount -t cgroup2 none /sys/fs/cgroup; }
# bcc wants /lib/modules/<ver>/build; in the guest /lib/modules may be a tmpfs
M=/lib/modules/$KVER
if [ ! -e "$M/build" ] && [ -d /usr/src/linux-headers-$KVER ]; then
    mkdir -p "$M" 2>/dev/null
    ln -sfn /usr/src/linux-headers-$KVER "$M/build" 2>/dev/null
    COMMON=$(echo /usr/src/linux-headers-${KVER%-*}-common)
    [ -d "$COMMON" ] && ln -sfn "$COMMON" "$M/source" 2>/dev/null
fi
export CORRAL_VMTEST=1 CORRAL_CACHE_DIR=/tmp/corral-cache CORRAL_RUN_DIR=/tmp/corral-run
export PYTHONDONTWRITEBYTECODE=1
cd "$REPO" || exit 1
rc=0
if [ "${CORRAL_BENCH:-0}" = 1 ]; then
    # first: its baseline needs a kernel without corral's programs attached;
    # it leaves them pinned and pytest reuses them (one compile per boot)
    "$PY" bench/bench_file_lsm.py --keep-pins || echo "[guest] benchmark failed"
fi
if [ "${CORRAL_TESTS:-1}" = 1 ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    eval "$PY -m pytest -p no:cacheprovider -v -rfEs tests/vm ${CORRAL_PYTEST_ARGS:-}"
    rc=$?
    echo "[guest] pytest took $(( $(date +%s) - start ))s"
fi
echo "CORRAL-VMTEST-EXIT=$rc"
