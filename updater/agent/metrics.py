"""The agent's metrics as Prometheus text for node_exporter's textfile collector.

Rendered with ``prometheus_client`` from the persisted record (a private registry with one
collector, then its text exposition), never formatted by hand. The values are the record's, so
they survive restarts (``rollbacks_total`` counts over the machine's life, not the process's).
Writing the file is the runner's job (atomically, ``store.write_atomic``): node_exporter must
never read half a file.

Metrics (README, "Metrics"):
- ``updater_agent_state{state}``: 1 for the current state, 0 for the others;
- ``updater_agent_info{booted_version,available_version,version,committed_version}``: 1;
- ``updater_agent_last_check_timestamp_seconds``, ``updater_agent_last_success_timestamp_seconds``
  (left out until there is one);
- ``updater_agent_rollbacks_total``: releases rolled back (failed health check or boot);
- ``updater_agent_lock_held``: 1 while this machine holds the reboot lock;
- ``updater_agent_blocked_releases``: releases never offered again until forgotten;
- ``updater_agent_error``: 1 when the last step failed (the status shows the message).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from updater.agent.record import Record, State


class _RecordCollector(Collector):
    def __init__(self, rec: Record) -> None:
        self.rec = rec

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | InfoMetricFamily]:
        rec = self.rec
        state = GaugeMetricFamily("updater_agent_state", "The agent's state (1: current).",
                                  labels=["state"])  # fmt: skip
        for s in State:
            state.add_metric([str(s)], 1.0 if s is rec.state else 0.0)
        yield state
        yield InfoMetricFamily("updater_agent", "Versions the agent knows of.", value={
            "booted_version": rec.booted_version or "",
            "available_version": rec.available or "",
            "version": rec.version or "",
            "committed_version": rec.committed_version or "",
        })  # fmt: skip
        for name, when, doc in (
            ("last_check", rec.last_check, "When the repository was last asked."),
            ("last_success", rec.last_success, "When a release was last committed."),
        ):
            if when is not None:
                yield GaugeMetricFamily(f"updater_agent_{name}_timestamp_seconds", doc, value=when)
        yield CounterMetricFamily("updater_agent_rollbacks", "Releases rolled back.",
                                  value=rec.rollbacks)  # fmt: skip
        yield GaugeMetricFamily("updater_agent_lock_held", "1 while holding the reboot lock.",
                                value=1.0 if rec.lock else 0.0)  # fmt: skip
        yield GaugeMetricFamily("updater_agent_blocked_releases", "Releases never offered again.",
                                value=len(rec.blocked))  # fmt: skip
        yield GaugeMetricFamily("updater_agent_error", "1 when the last step failed.",
                                value=1.0 if rec.last_error else 0.0)  # fmt: skip


def render(rec: Record) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RecordCollector(rec))
    return generate_latest(registry)
