#!/bin/bash
# Boot a built disk once under QEMU (TCG, OVMF, no network) for a manual check, and report how
# long it took to reach UPDATER-READY (or UPDATER-BOOT-FAILED). The disk itself is never written:
# the VM runs on a throw-away qcow2 overlay.
#
#   images/boot.sh DISK [LOG] [TIMEOUT_SECONDS]
#
# The VM tests in tests/vm have their own harness; this is for people and for debugging images.
set -euo pipefail
disk=$(readlink -f "$1")
log=${2:-/dev/stdout}
limit=${3:-300}
work=$(mktemp -d)
trap 'kill "$qemu_pid" 2>/dev/null || true; rm -rf "$work"' EXIT

cp /usr/share/OVMF/OVMF_VARS_4M.fd "$work/vars.fd"
qemu-img create -q -f qcow2 -F raw -b "$disk" "$work/overlay.qcow2"
start=$(date +%s.%N)
timeout "$limit" qemu-system-x86_64 -accel tcg -m 1024 -nographic \
    -drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
    -drive if=pflash,format=raw,file="$work/vars.fd" \
    -drive file="$work/overlay.qcow2",if=virtio,format=qcow2 \
    -net none -serial mon:stdio < /dev/null > "$work/console" 2>&1 &
qemu_pid=$!
result=timeout
while kill -0 "$qemu_pid" 2>/dev/null; do
    if grep -q "UPDATER-READY" "$work/console"; then result=ready; break; fi
    if grep -q "UPDATER-BOOT-FAILED" "$work/console"; then result=failed; break; fi
    sleep 0.5
done
end=$(date +%s.%N)
sleep 1
# The VM may have powered itself off (failure path) before the loop looked again.
if [ "$result" = timeout ]; then
    if grep -q "UPDATER-BOOT-FAILED" "$work/console"; then result=failed; fi
    if grep -q "UPDATER-READY" "$work/console"; then result=ready; fi
fi
tr -d '\r' < "$work/console" > "$log" || true
tr -d "\r" < "$work/console" | grep -a -o "UPDATER-[A-Z-]*.*" | sort -u >&2 || true
awk -v r="$result" -v s="$start" -v e="$end" 'BEGIN { printf "boot.sh: %s after %.1f s\n", r, e - s }' >&2
[ "$result" = ready ]
