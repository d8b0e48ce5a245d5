#!/bin/sh
# cmdline hook: find the USR device named on the kernel command line and make dracut wait for it.
# verity.usr= names the partition holding filesystem + hash tree; mount.usr= is where /usr comes
# from (/dev/mapper/usr in verity boots, or the partition itself in images without verity, which
# this project refuses: there is no unverified /usr).
type getarg > /dev/null 2>&1 || . /lib/dracut-lib.sh
. /lib/updater-lib.sh

_images=$(getarg updater.images=)
if [ -n "$_images" ]; then
    # The file backend: the images are on the root filesystem; nothing to wait for but root.
    case "$_images" in
        /*) ;;
        *) updater_fail "updater.images=$_images is not an absolute directory" ;;
    esac
    case "$_images" in
        *[!A-Za-z0-9._/-]* | */../* | */..) updater_fail "unsafe updater.images=$_images" ;;
    esac
    mkdir -p /run/updater
    echo "$_images" > /run/updater/images
    return 0 2> /dev/null || exit 0
fi

if [ -f "$UPDATER_FACTS" ]; then
    # DELIVERY=initrd: the slot and hash come from the appended facts archive, not the cmdline.
    _usr=$(updater_fact UPDATER_USR) || updater_fail "$UPDATER_FACTS names no UPDATER_USR"
    _hash=$(updater_fact UPDATER_USRHASH)
    updater_say "updater: boot facts from the initrd: slot $(updater_fact UPDATER_SLOT)"
else
    _usr=$(getarg verity.usr=)
    [ -n "$_usr" ] || _usr=$(getarg mount.usr=)
    if [ -z "$_usr" ]; then
        updater_fail "no verity.usr= or mount.usr= on the kernel command line"
    fi
    if [ "$_usr" = /dev/mapper/usr ]; then
        updater_fail "mount.usr=/dev/mapper/usr needs verity.usr=PARTUUID=... to name the partition"
    fi
    _hash=$(getarg verity.usrhash=)
fi
_dev=$(updater_resolve "$_usr") || updater_fail "cannot understand the usr device $_usr"

case "$_hash" in
    *[!0-9a-f]*) updater_fail "verity.usrhash is not lowercase hex: $_hash" ;;
esac
[ ${#_hash} -eq 64 ] || updater_fail "verity.usrhash missing or not 64 hex digits: '$_hash'"

mkdir -p /run/updater
echo "$_dev" > /run/updater/usr-device
echo "$_hash" > /run/updater/usr-hash
_oem=$(updater_fact UPDATER_OEM_ID) || _oem=$(getarg flatcar.oem.id=)
[ -n "$_oem" ] && echo "$_oem" > /run/updater/oem-id

wait_for_dev -n "$_dev"
if updater_first_boot; then
    wait_for_dev -n /dev/disk/by-label/EFI-SYSTEM
fi
