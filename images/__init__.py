"""Image building for the test VMs (see build.py)."""
