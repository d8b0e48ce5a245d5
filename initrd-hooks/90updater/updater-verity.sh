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

_dev=$(cat /run/updater/usr-device)
_hash=$(cat /run/updater/usr-hash)
[ -b "$_dev" ] || updater_fail "USR partition $_dev did not appear"

_fs=$(updater_fs_bytes "$_dev") || updater_fail "no squashfs or erofs superblock on $_dev"
case "$_fs" in '' | *[!0-9]*) updater_fail "unreadable filesystem size on $_dev" ;; esac
_offset=$(((_fs + 4095) / 4096 * 4096))

# The verity superblock at the hash offset supplies salt and data block count; the root hash
# from the command line decides whether any of it is believed.
if ! veritysetup open "$_dev" usr "$_dev" "$_hash" --hash-offset="$_offset" > /tmp/verity.log 2>&1; then
    updater_fail "veritysetup open of $_dev failed (hash offset $_offset): $(tr '\n' ' ' < /tmp/verity.log)"
fi
udevadm settle --exit-if-exists=/dev/mapper/usr > /dev/null 2>&1
_size=$(blockdev --getsize64 /dev/mapper/usr)
if [ "$_size" != "$_offset" ]; then
    dmsetup remove usr
    updater_fail "verity data size $_size of $_dev does not match its filesystem ($_offset bytes)"
fi

if ! dd if=/dev/mapper/usr of=/dev/null bs=1M iflag=direct 2> /tmp/verity.log; then
    dmsetup remove usr
    updater_fail "dm-verity: $_dev does not match verity.usrhash=$_hash (corrupted block or wrong root hash; see 'device-mapper: verity' in the kernel log)"
fi
if ! updater_verity_ok "$(dmsetup status usr)"; then
    dmsetup remove usr
    updater_fail "dm-verity: corruption detected on $_dev (verity.usrhash=$_hash)"
fi
info "updater: $_dev verified as /dev/mapper/usr"
