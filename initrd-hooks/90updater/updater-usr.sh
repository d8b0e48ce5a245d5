#!/bin/sh
# pre-pivot hook: root is mounted at $NEWROOT by rootfs-block; add the verified /usr read-only,
# then run first-boot provisioning once.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
. /lib/updater-lib.sh

if [ -f /run/updater/images ]; then
    # The file backend: promote or revert by the rules, then root.img through dm-verity.
    . /lib/updater-files.sh
    _dir="$NEWROOT$(cat /run/updater/images)"
    [ -d "$_dir" ] || updater_fail "image directory $_dir does not exist"
    if ! _steps=$(updater_files_promote "$_dir"); then
        updater_fail "the image directory $_dir could not be brought to a bootable state ($_steps)"
    fi
    [ -n "$_steps" ] && updater_say "updater: $(echo "$_steps" | tr '\n' ';')"
    [ -f "$_dir/root.img" ] || updater_fail "no root.img in $_dir"
    _facts=$(updater_files_trailer "$_dir/root.img") || updater_fail "$_dir/root.img has no valid trailer"
    # shellcheck disable=SC2086 # "HASH OFFSET", split on purpose
    set -- $_facts
    # veritysetup attaches the file to a loop device itself; the driver is a module on Debian.
    modprobe loop > /dev/null 2>&1
    updater_verity_open "$_dir/root.img" "$1" "$2"
    updater_say "UPDATER-FILES: root.img verified ($1)"
fi
[ -b /dev/mapper/usr ] || updater_fail "/dev/mapper/usr is missing at pre-pivot"
mkdir -p "$NEWROOT/usr" 2> /dev/null
_flags=$(getarg mount.usrflags=)
if ! mount -t squashfs -o "ro${_flags:+,$_flags}" /dev/mapper/usr "$NEWROOT/usr" 2> /dev/null \
    && ! mount -t erofs -o "ro${_flags:+,$_flags}" /dev/mapper/usr "$NEWROOT/usr"; then
    updater_fail "cannot mount /dev/mapper/usr at $NEWROOT/usr"
fi

if updater_first_boot; then
    # Provisioning first, marker removal last: if power fails in between, the next boot simply
    # provisions again (every step is idempotent).
    if [ ! -s "$NEWROOT/etc/machine-id" ]; then
        # The kernel's random UUID without dashes is a valid machine ID.
        tr -d '-' < /proc/sys/kernel/random/uuid > "$NEWROOT/etc/machine-id"
    fi
    mkdir -p "$NEWROOT/var/lib/updater"
    date -u +%Y-%m-%dT%H:%M:%SZ > "$NEWROOT/var/lib/updater/first-boot"
    mkdir -p /run/updater/esp
    if mount -t vfat -o rw /dev/disk/by-label/EFI-SYSTEM /run/updater/esp; then
        rm -f /run/updater/esp/flatcar/first_boot /run/updater/esp/coreos/first_boot
        umount /run/updater/esp
    else
        warn "updater: cannot mount the ESP to remove flatcar/first_boot"
    fi
    sync
    updater_say "UPDATER-FIRST-BOOT"
fi
