#!/bin/sh
# Shared by the updater hooks. Sourced by dracut's init, so only POSIX sh plus dracut-lib.sh.

# Every failure ends here: one line that tests and people can grep for, on every console, then the
# machine reboots through the firmware, as Flatcar's and ChromeOS's initrds do: the boot try was
# consumed before this kernel started (by GRUB, or by `updater kexec`), so GRUB now picks the
# other slot, or the same one while it has tries left. Powering off instead would leave a machine
# in a fleet dead until someone walks to it. Nothing unverified is ever mounted. rd.shell on the
# command line gives an emergency shell instead (for debugging).
#
# The pause keeps a machine whose every slot fails (a known-good slot is retried on every boot:
# nothing else is left to boot) from rebooting at full speed, and leaves the line on the screen.
UPDATER_FAIL_PAUSE=5
updater_fail() {
    _msg="UPDATER-BOOT-FAILED: $*"
    echo "<2>$_msg" > /dev/kmsg 2> /dev/null
    echo "$_msg" > /dev/console 2> /dev/null
    [ -c /dev/ttyS0 ] && echo "$_msg" > /dev/ttyS0 2> /dev/null
    if getargbool 0 rd.shell; then
        emergency_shell -n updater "$_msg"
    fi
    updater_say "UPDATER-REBOOTING in ${UPDATER_FAIL_PAUSE} s (the firmware and GRUB choose the slot)"
    sync
    sleep "$UPDATER_FAIL_PAUSE"
    # sysrq works without any userspace tool and regardless of the kernel.sysrq mask; b restarts
    # through the firmware at once (everything that matters was synced above).
    echo b > /proc/sysrq-trigger
    while :; do sleep 60; done
}

# Whether a `dmsetup status` line of a verity target reports no corruption: "START LEN verity V"
# and, on newer kernels, more fields after the V (e.g. " -" for FEC), so the fourth field counts,
# not the end of the line. C (corrupted) or anything else is a failure.
updater_verity_ok() {
    # shellcheck disable=SC2086 # split the status line into its fields on purpose
    set -- $1
    [ "$3" = verity ] && [ "$4" = V ]
}

updater_say() {
    echo "$*" > /dev/console 2> /dev/null
    [ -c /dev/ttyS0 ] && echo "$*" > /dev/ttyS0 2> /dev/null
    return 0
}

# PARTUUID=x / PARTLABEL=x / LABEL=x / UUID=x / /dev/... -> a device path udev creates.
updater_resolve() {
    case "$1" in
        PARTUUID=*) echo "/dev/disk/by-partuuid/$(echo "${1#PARTUUID=}" | tr 'A-F' 'a-f')" ;;
        PARTLABEL=*) echo "/dev/disk/by-partlabel/${1#PARTLABEL=}" ;;
        LABEL=*) echo "/dev/disk/by-label/${1#LABEL=}" ;;
        UUID=*) echo "/dev/disk/by-uuid/${1#UUID=}" ;;
        /dev/*) echo "$1" ;;
        *) return 1 ;;
    esac
}

# Little-endian unsigned integer of $3 bytes at offset $2 of $1 (od reads host order: x86 is LE).
updater_read_uint() {
    od -An -t "u$3" -j "$2" -N "$3" "$1" 2> /dev/null | tr -d ' \n'
}

# Bytes of the filesystem at the start of $1, from its own superblock: squashfs bytes_used, or
# erofs blocks << blkszbits. The hash tree starts at this size rounded up to 4096. The superblock
# is not trusted: a wrong size moves the hash offset, and veritysetup then finds no valid verity
# superblock or the tree no longer matches the root hash.
updater_fs_bytes() {
    _magic=$(od -An -c -N 4 "$1" 2> /dev/null | tr -d ' \n')
    if [ "$_magic" = "hsqs" ]; then
        updater_read_uint "$1" 40 8
        return 0
    fi
    _emagic=$(updater_read_uint "$1" 1024 4)
    if [ "$_emagic" = "3774210530" ]; then # 0xe0f5e1e2, EROFS_SUPER_MAGIC_V1
        _bits=$(updater_read_uint "$1" 1036 1)
        _blocks=$(updater_read_uint "$1" 1060 4)
        echo $((_blocks << _bits))
        return 0
    fi
    return 1
}

# Boot facts from the secondary initrd that `updater kexec` appends when DELIVERY=initrd (a newc
# cpio holding etc/updater/boot-facts.env): the slot, its verity hash and the first-boot flag,
# so that the kernel command line stays the same across slots and updates. Read line by line as
# data (never sourced): KEY=value, values of [A-Za-z0-9._:,/+=-] only. Prints the value of $1.
UPDATER_FACTS=/etc/updater/boot-facts.env
updater_fact() {
    [ -f "$UPDATER_FACTS" ] || return 1
    while IFS='=' read -r _key _value; do
        if [ "$_key" = "$1" ]; then
            case "$_value" in
                *[!A-Za-z0-9._:,/+=-]*) updater_fail "unsafe value for $1 in $UPDATER_FACTS" ;;
            esac
            echo "$_value"
            return 0
        fi
    done < "$UPDATER_FACTS"
    return 1
}

# First boot, from the facts file when there is one, else from the command line.
updater_first_boot() {
    if [ -f "$UPDATER_FACTS" ]; then
        [ "$(updater_fact UPDATER_FIRST_BOOT)" = 1 ]
        return
    fi
    [ "$(getarg flatcar.first_boot=)" = detected ]
}

# Open $1 (a partition, or an image file: veritysetup attaches loop devices itself) as
# /dev/mapper/usr with root hash $2 and the hash tree at byte $3, then read every data block once
# (O_DIRECT) and ask the kernel whether it saw corruption (see updater-verity.sh). Any failure
# ends the boot (updater_fail) before anything from it is mounted.
updater_verity_open() {
    # The verity superblock at the hash offset supplies salt and data block count; the root hash
    # decides whether any of it is believed.
    if ! veritysetup open "$1" usr "$1" "$2" --hash-offset="$3" > /tmp/verity.log 2>&1; then
        updater_fail "veritysetup open of $1 failed (hash offset $3): $(tr '\n' ' ' < /tmp/verity.log)"
    fi
    udevadm settle --exit-if-exists=/dev/mapper/usr > /dev/null 2>&1
    _vsize=$(blockdev --getsize64 /dev/mapper/usr)
    if [ "$_vsize" != "$3" ]; then
        dmsetup remove usr
        updater_fail "verity data size $_vsize of $1 does not match its filesystem ($3 bytes)"
    fi
    if ! dd if=/dev/mapper/usr of=/dev/null bs=1M iflag=direct 2> /tmp/verity.log; then
        dmsetup remove usr
        updater_fail "dm-verity: $1 does not match root hash $2 (corrupted block or wrong root hash; see 'device-mapper: verity' in the kernel log)"
    fi
    if ! updater_verity_ok "$(dmsetup status usr)"; then
        dmsetup remove usr
        updater_fail "dm-verity: corruption detected on $1 (root hash $2)"
    fi
}
