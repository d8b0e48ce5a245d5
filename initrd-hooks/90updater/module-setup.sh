#!/bin/bash
# dracut module "updater": opens the USR partition chosen by the boot loader through dm-verity,
# mounts it read-only at /sysroot/usr, and runs first-boot provisioning.
#
# Written for dracut's shell init (no systemd in the initrd): the images build their initramfs
# with an explicit module list (see images/build.py), which keeps the initrd small and the order
# of events plain: cmdline hook -> udev settles -> pre-mount hook (verity) -> root mounted by
# rootfs-block -> pre-pivot hook (/usr, first boot) -> switch_root.

# Only when asked for (dracut --add updater / -m ... updater): it changes how /usr is found.
check() {
    return 255
}

depends() {
    # dm: dmsetup and the udev rules that create /dev/mapper/*; rootfs-block: root=LABEL=...
    echo dm rootfs-block
    return 0
}

# nls_ascii: Debian's kernel mounts vfat with iocharset=ascii unless told otherwise (first boot
# mounts the ESP to remove the marker).
installkernel() {
    hostonly='' instmods dm_mod dm_verity loop squashfs erofs ext4 vfat nls_cp437 nls_iso8859_1 \
        nls_utf8 nls_ascii virtio_blk virtio_pci virtio_scsi sd_mod
}

install() {
    inst_multiple veritysetup dmsetup od dd blockdev mount umount rm mkdir date sync cat tr sleep \
        mv wc tail modprobe
    inst_simple "$moddir/updater-lib.sh" /lib/updater-lib.sh
    inst_simple "$moddir/updater-files.sh" /lib/updater-files.sh
    inst_hook cmdline 20 "$moddir/updater-cmdline.sh"
    inst_hook pre-mount 20 "$moddir/updater-verity.sh"
    inst_hook pre-pivot 20 "$moddir/updater-usr.sh"
}
