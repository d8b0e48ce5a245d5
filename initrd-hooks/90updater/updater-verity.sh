#!/bin/sh
# pre-mount hook: open the USR partition as /dev/mapper/usr through dm-verity and prove all of it.
#
# dm-verity checks a block only when it is read, so a flipped byte in a file nobody opens during
# boot would go unnoticed. This hook therefore reads the whole mapped device once (O_DIRECT, so
# it does not fill the page cache) and then asks the kernel whether it saw corruption. Any error
# stops the boot before anything from USR is mounted. The cost is one sequential read of the
# filesystem (a few seconds for ~200 MiB under emulation); later runtime reads keep dm-verity's
# default mode (EIO on a bad block) so a disk that rots after boot fails reads, not the machine.
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
. /lib/updater-lib.sh

# The file backend opens its image at pre-pivot, once the root filesystem that holds it is mounted.
[ -f /run/updater/images ] && return 0
_dev=$(cat /run/updater/usr-device)
_hash=$(cat /run/updater/usr-hash)
[ -b "$_dev" ] || updater_fail "USR partition $_dev did not appear"

_fs=$(updater_fs_bytes "$_dev") || updater_fail "no squashfs or erofs superblock on $_dev"
case "$_fs" in '' | *[!0-9]*) updater_fail "unreadable filesystem size on $_dev" ;; esac
_offset=$(((_fs + 4095) / 4096 * 4096))

updater_verity_open "$_dev" "$_hash" "$_offset"
info "updater: $_dev verified as /dev/mapper/usr"
