"""``updater install``: a blank disk turned into an installed, verified, bootable disk.

Modules, bottom up:

- ``plan`` (pure): the layout this install writes (Flatcar's, with fresh GUIDs), partitions
  placed on the disk, the refusals (too small, holds data, in use), the regions to clear;
- ``events`` (pure): what the flow reports, as JSON lines or lines for people;
- ``params`` (pure): ``updater.install.*`` kernel parameters to command-line options;
- ``probe``: what the disk is and holds (pyparted, wipefs, sysfs, mounts);
- ``partition``: aligned partitions from libparted (pyparted), never committed by it;
- ``media``: clearing old signatures, making the filesystems at their offsets, the ESP's files;
- ``assets``: what the installer puts on the disk besides the release (GRUB, ROOT, OEM);
- ``flow``: the order of it all, the partition table last.

The release itself is written by ``updater.deploy``, as ``updater update`` writes one.
"""
