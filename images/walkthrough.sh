#!/usr/bin/env bash
# The A/B state machine on a plain image file, no VM: create a Flatcar-layout disk image and walk
# it through an update's life (activate, trial boot, fallback, second try, marked good, manual
# rollback), printing the A/B state after every step. Run: bash images/walkthrough.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/setup >&2
work=${DEMO_DIR:-$(mktemp -d /tmp/updater-demo.XXXXXX)}
img=$work/disk.img
U=(.venv/bin/updater --disk "$img")

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '$ updater %s\n' "$*"; "${U[@]}" "$@"; }

step "1. Create a Flatcar-layout disk image (USR-A holds the running OS: P1 T0 S1; USR-B empty)"
rm -f "$img"
.venv/bin/updater create-disk "$img" --usr-size 64
printf 'hsqs' | dd of="$img" bs=512 seek="$(sgdisk -i 3 "$img" | awk '/First sector/ {print $3}')" conv=notrunc status=none
show --booted A status

step "2. A new release was written to USR-B and verified: activate it for one trial boot"
show --booted A set-active B

step "3. Reboot: the boot loader's choice consumes B's only try"
show next

step "4. B never marked itself healthy; the next boot falls back to A (nothing is written)"
show next
show --booted A status

step "5. Try again: activate B, boot it, and this time it proves healthy"
show --booted A set-active B
show next
show --booted B mark-good

step "6. B sticks across reboots"
show next
show next

step "7. The operator rolls back to A (it booted well before and still holds its image)"
show --booted B rollback
show --booted B status --json
printf '\ndemo disk: %s\n' "$img"
