"""The reboot semaphore as data: keys, the gateway's JSON (shaped as etcd 3.4's gateway answers,
64-bit integers as strings and zero values left out), the transactions, and FleetLock bodies.
The transactions' effect is tested against a real etcd in tests/integration/test_fleet.py."""

from __future__ import annotations

import base64
import json

import pytest

from updater.errors import DataError
from updater.rebootlock import fleetlock, semaphore
from updater.rebootlock.semaphore import Decision, Keys


def b(text: bytes) -> str:
    return base64.b64encode(text).decode()


KEYS = Keys("updater/reboot-lock", "workers")


def test_keys_and_prefix_ranges() -> None:
    assert KEYS.max == b"updater/reboot-lock/workers/max"
    assert KEYS.holder("m1") == b"updater/reboot-lock/workers/holders/m1"
    assert semaphore.prefix_end(b"a/b/") == b"a/b0"
    assert semaphore.prefix_end(b"a\xff\xff") == b"b"
    assert semaphore.prefix_end(b"\xff") == b"\0"
    with pytest.raises(DataError, match="holder id"):
        KEYS.holder("a/../b")
    with pytest.raises(DataError, match="lock group"):
        Keys("p", "no/slash").max  # noqa: B018


def _holder_kv(holder: str, lease: int, created: int) -> dict[str, object]:
    value = json.dumps({"id": holder, "since": "2030-01-01T00:00:00Z"}).encode()
    return {"key": b(KEYS.holder(holder)), "create_revision": str(created),
            "mod_revision": str(created), "version": "1", "value": b(value), "lease": str(lease)}


def _answer(max_kvs: list[dict[str, object]], holder_kvs: list[dict[str, object]],
            revision: int = 42) -> dict[str, object]:  # fmt: skip
    def part(kvs: list[dict[str, object]]) -> dict[str, object]:
        inner: dict[str, object] = {"header": {"revision": str(revision)}}
        if kvs:
            inner.update(kvs=kvs, count=str(len(kvs)))
        return {"response_range": inner}

    return {"header": {"revision": str(revision)}, "succeeded": True,
            "responses": [part(max_kvs), part(holder_kvs)]}  # fmt: skip


def test_snapshot_of_an_empty_group_defaults_to_one() -> None:
    snap = semaphore.parse_snapshot(KEYS, _answer([], []))
    assert (snap.max, snap.max_revision, snap.holders, snap.revision) == (1, 0, (), 42)
    assert semaphore.decide(snap, "m1") is Decision.FREE


def test_snapshot_with_holders() -> None:
    max_kv: dict[str, object] = {"key": b(KEYS.max), "value": b(b"2"), "mod_revision": "7",
                                 "create_revision": "7"}  # fmt: skip
    snap = semaphore.parse_snapshot(
        KEYS, _answer([max_kv], [_holder_kv("m2", 99, 30), _holder_kv("m1", 98, 20)]))
    assert snap.max == 2 and snap.max_revision == 7
    assert [h.id for h in snap.holders] == ["m1", "m2"], "ordered by when they took the lock"
    assert snap.holds("m2") == semaphore.Holder("m2", "2030-01-01T00:00:00Z", 99, 30)
    assert semaphore.decide(snap, "m2") is Decision.HELD
    assert semaphore.decide(snap, "m3") is Decision.FULL


def test_acquire_is_one_compare_and_swap() -> None:
    snap = semaphore.parse_snapshot(KEYS, _answer([], [_holder_kv("m1", 5, 40)], revision=41))
    txn = semaphore.acquire_txn(KEYS, snap, "m9", 77, "2030-01-01T00:00:00Z")
    end = b"updater/reboot-lock/workers/holders0"
    holders_range = {"key": b(KEYS.holders), "range_end": b(end)}
    assert txn["compare"] == [
        {**holders_range, "target": "MOD", "result": "LESS", "mod_revision": "42"},
        {"key": b(KEYS.max), "target": "MOD", "result": "EQUAL", "mod_revision": "0"},
        {"key": b(KEYS.holder("m9")), "target": "CREATE", "result": "EQUAL",
         "create_revision": "0"},
    ]  # fmt: skip
    put = txn["success"][0]["request_put"]
    assert base64.b64decode(put["key"]) == KEYS.holder("m9") and put["lease"] == "77"
    assert json.loads(base64.b64decode(put["value"])) == {"id": "m9",
                                                          "since": "2030-01-01T00:00:00Z"}
    assert "failure" not in txn


def test_release_and_set_max() -> None:
    rel = semaphore.release_txn(KEYS, "m1")
    assert rel["compare"] == [{"key": b(KEYS.holder("m1")), "target": "CREATE",
                               "result": "GREATER", "create_revision": "0"}]  # fmt: skip
    assert rel["success"] == [{"request_delete_range": {"key": b(KEYS.holder("m1"))}}]
    snap = semaphore.parse_snapshot(KEYS, _answer([], []))
    put = semaphore.set_max_txn(KEYS, snap, 3)["success"][0]["request_put"]
    assert base64.b64decode(put["value"]) == b"3"
    with pytest.raises(DataError, match="0..1000"):
        semaphore.set_max_txn(KEYS, snap, 1001)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ([], "not an object"),
        ({"responses": [{}]}, "did not return two ranges"),
        (_answer([{"key": b(KEYS.max), "value": b(b"lots")}], []), "maximum 'lots'"),
        (_answer([{"key": b(KEYS.max), "value": b(b"5000")}], []), "maximum '5000'"),
        (_answer([], [{"key": "***", "value": ""}]), "not base64"),
        (_answer([], [{"key": b(b"elsewhere/x"), "value": ""}]), "outside the semaphore"),
        (_answer([], [{**_holder_kv("m1", 1, 2), "lease": "-3"}]), "not a whole number"),
        (_answer([], [{**_holder_kv("m1", 1, 2), "key": b(KEYS.holders + b"a b")}]), "holder id"),
    ],
)
def test_hostile_gateway_answers(answer: object, message: str) -> None:
    with pytest.raises(DataError, match=message):
        semaphore.parse_snapshot(KEYS, answer)


def test_a_garbled_holder_value_still_counts() -> None:
    """A holder key whose value is not ours still takes a place: better one reboot too few."""
    kv = {**_holder_kv("m1", 1, 2), "value": b(b"\x00garbage")}
    snap = semaphore.parse_snapshot(KEYS, _answer([], [kv]))
    assert [h.id for h in snap.holders] == ["m1"] and snap.holders[0].since == ""


def test_groups_in() -> None:
    keys = [b"updater/reboot-lock/a/max", b"updater/reboot-lock/b/holders/x",
            b"updater/reboot-lock/a/holders/y", b"updater/reboot-lock/bad group/max"]  # fmt: skip
    answer = {"kvs": [{"key": b(k)} for k in keys]}
    assert semaphore.groups_in("updater/reboot-lock", answer) == ["a", "b"]


def test_fleetlock_bodies() -> None:
    good = json.dumps(fleetlock.body("c988d2509fdf4cdcbed39037c56406fb", "workers")).encode()
    assert fleetlock.parse_body(good) == ("c988d2509fdf4cdcbed39037c56406fb", "workers")
    for bad, message in [
        (b"nope", "not JSON"),
        (b"{}", "no client_params"),
        (b'{"client_params": {"id": 1, "group": "g"}}', "needs the strings"),
        (b'{"client_params": {"id": "a", "group": "a_b"}}', "lock group"),
        (b'{"client_params": {"id": "", "group": "g"}}', "holder id"),
    ]:
        with pytest.raises(DataError, match=message):
            fleetlock.parse_body(bad)
