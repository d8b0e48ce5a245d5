"""Reboot coordination: a counting semaphore in etcd v3 with leases, and the FleetLock protocol.

``semaphore`` is pure (keys, holder records, the compare-and-swap transactions as plain values);
``etcd`` talks to etcd's v3 JSON gateway; ``fleetlock`` is the protocol's client and server.
"""
