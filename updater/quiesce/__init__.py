"""A clean stop before ``kexec -e`` on a machine whose PID 1 is not systemd, and checkpoints of
selected processes (CRIU) that survive the kexec.

- ``plan``: pure, the quiesce as a list of timed steps (stop services, sync, unmount or remount
  read-only, execute) and the firmware fallback;
- ``runner``: carries a plan out through ``updater.run``, times and logs each step, and falls
  back to ``reboot -f`` when a step fails or the time is up;
- ``checkpoint``: pure, the CRIU commands, the manifest kept beside the dump, the downtime;
- ``criu``: the dump before the jump and the restore after the new slot booted.

On a systemd machine ``systemctl kexec`` does the quiesce; the checkpoint works on both.
"""
