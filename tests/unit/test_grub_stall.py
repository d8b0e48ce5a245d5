"""The VM harness's warm-reset stall detector (tests/vm/harness.py), on console text as QEMU
logged it."""

from __future__ import annotations

from tests.vm.harness import GRUB_STALL_SECONDS, grub_stalled

FIRMWARE = (
    "\x1b[2J\x1b[01;01H\x1b[=3h\x1b[2J\x1b[01;01H"
    'BdsDxe: starting Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x1,0x0)\r\n'
)
RESET = "[   87.119535] reboot: Restarting system\r\n" + FIRMWARE
# The CI run that stalled: the banner, the terminal's colour codes, then nothing for 420 s.
STALLED = RESET + "\x1b[0m\x1b[30m\x1b[47mWelcome to GRUB!\r\n\r\n\x1b[0m\x1b[37m\x1b[40m"
BOOTING = STALLED + "Booting USR-a (PARTUUID 7130c94a-213a-4e5a-8e26-6cce9662f132)\r\n"
FAILED = STALLED + "UPDATER-BOOT-FAILED: no bootable USR partition in the grubenv\r\n"
LONG = GRUB_STALL_SECONDS + 1


def test_a_banner_then_only_terminal_codes_for_long_is_a_stall() -> None:
    assert grub_stalled(STALLED, 0, LONG)
    assert grub_stalled(STALLED, len(RESET), LONG)


def test_not_a_stall_before_the_time_is_up() -> None:
    assert not grub_stalled(STALLED, 0, GRUB_STALL_SECONDS - 1)


def test_a_menu_that_printed_anything_is_not_stalled() -> None:
    assert not grub_stalled(BOOTING, 0, LONG)
    assert not grub_stalled(FAILED, 0, LONG)  # a failing menu says so and must fail the test


def test_a_banner_before_the_wait_began_does_not_count() -> None:
    later = STALLED + "\r\n"
    assert not grub_stalled(later, len(later), LONG)
    assert not grub_stalled(STALLED, len(STALLED) - 5, LONG)


# The other CI run that stalled: the kernel reset the machine, then not even the firmware's
# boot line for 420 s (the shutdown's last lines as that run logged them).
SILENT_FIRMWARE = (
    "[   89.734833] systemd-shutdown[1]: Failed to finalize file systems, DM devices, ignoring.\r\n"
    "[   89.773326] reboot: Restarting system\r\n"
)


def test_a_reset_then_silence_for_long_is_a_stall() -> None:
    assert grub_stalled(SILENT_FIRMWARE, 0, LONG)
    assert not grub_stalled(SILENT_FIRMWARE, 0, GRUB_STALL_SECONDS - 1)
    assert not grub_stalled(SILENT_FIRMWARE, len(SILENT_FIRMWARE), LONG)  # before the wait


def test_the_latest_marker_decides() -> None:
    # An old banner followed by a reset that printed its boot line is no stall; a new reset
    # after a booted system is one.
    assert not grub_stalled(BOOTING + SILENT_FIRMWARE + FIRMWARE, 0, LONG)
    assert grub_stalled(BOOTING + SILENT_FIRMWARE, 0, LONG)


def test_without_a_marker_nothing_is_a_stall() -> None:
    assert not grub_stalled(RESET, 0, LONG)
    assert not grub_stalled("", 0, LONG)
