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
    assert semaphore.prefix_end(b"a\xff") == b"b"  # etcd's clientv3.GetPrefixRangeEnd
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


# --- every bound and every refusal ------------------------------------------------------------


def test_base64_fields() -> None:
    assert semaphore.unb64(b(b"\x00\xffab")) == b"\x00\xffab"
    assert semaphore.unb64("") == b""
    for bad in (None, 5, b"YQ==", "A" * ((1 << 16) + 1)):
        with pytest.raises(DataError, match="^etcd: a key or value is not base64 text$"):
            semaphore.unb64(bad)
    assert semaphore.unb64("A" * (1 << 16)) == base64.b64decode("A" * (1 << 16))
    for bad in ("***", "YQ", "YQ==\n"):
        with pytest.raises(DataError, match="^etcd: a key or value is not base64$"):
            semaphore.unb64(bad)


@pytest.mark.parametrize("holder", ["a", "A.b_c:d@e-f9", "x" * 128])
def test_holder_ids_that_are_allowed(holder: str) -> None:
    assert semaphore.check_id(holder) == holder


@pytest.mark.parametrize("holder", ["", "x" * 129, "a b", "a/b", "é", "a\n"])
def test_holder_ids_that_are_refused(holder: str) -> None:
    with pytest.raises(DataError) as info:
        semaphore.check_id(holder)
    assert info.value.message == (
        f"lock holder id {holder!r} is not 1-128 of A-Z a-z 0-9 . _ : @ -"
    )


@pytest.mark.parametrize(("group", "ok"), [("a", True), ("A.b-9", True), ("g" * 64, True),
                                           ("g" * 65, False), ("", False), ("a_b", False),
                                           ("a:b", False)])  # fmt: skip
def test_groups(group: str, ok: bool) -> None:
    if ok:
        assert semaphore.check_group(group) == group
        return
    with pytest.raises(DataError) as info:
        semaphore.check_group(group)
    assert info.value.message == f"lock group {group!r} is not 1-64 of a-z A-Z 0-9 . -"


def test_keys_strip_the_prefix_slashes() -> None:
    keys = Keys("/a/b/", "g")
    assert (keys.base, keys.max, keys.holders) == (b"a/b/g/", b"a/b/g/max", b"a/b/g/holders/")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (7, 7), ("0", 0), ("9" * 19, int("9" * 19)), (None, 0)],
)
def test_gateway_integers(value: object, expected: int) -> None:
    assert semaphore.parse_int(value, "x") == expected


@pytest.mark.parametrize("value", [-1, True, False, "9" * 20, "-1", "1.0", "", 1.0, " 1"])
def test_gateway_integers_refused(value: object) -> None:
    with pytest.raises(DataError, match="^etcd: a lease id is not a whole number$"):
        semaphore.parse_int(value, "a lease id")


def test_read_transaction() -> None:
    assert semaphore.read_txn(KEYS) == {
        "success": [
            {"request_range": {"key": b(b"updater/reboot-lock/workers/max")}},
            {"request_range": {"key": b(b"updater/reboot-lock/workers/holders/"),
                               "range_end": b(b"updater/reboot-lock/workers/holders0")}},
        ]
    }  # fmt: skip


@pytest.mark.parametrize(("text", "value"), [(b"0", 0), (b" 3\n", 3), (b"1000", 1000)])
def test_maximum_values(text: bytes, value: int) -> None:
    assert semaphore.parse_max(text) == value


@pytest.mark.parametrize(("text", "shown"), [(b"1001", "'1001'"), (b"-1", "'-1'"),
                                             (b"x" * 30, repr("x" * 20)), (b"", "''")])  # fmt: skip
def test_maximum_values_refused(text: bytes, shown: str) -> None:
    with pytest.raises(DataError) as info:
        semaphore.parse_max(text)
    assert info.value.message == f"etcd: the semaphore maximum {shown} is not 0..1000"


def test_full_and_decisions() -> None:
    snap = semaphore.Snapshot("g", 0, 0, (), 1)
    assert snap.full and semaphore.decide(snap, "m1") is Decision.FULL
    one = semaphore.Holder("m1", "", 1, 1)
    two = semaphore.Snapshot("g", 2, 0, (one,), 1)
    assert not two.full and semaphore.decide(two, "m2") is Decision.FREE
    assert two.holds("m1") is one and two.holds("m2") is None


def test_holder_records_that_are_not_ours() -> None:
    """The since field is kept only when it is a short string; anything else counts as a
    holder with an unknown since."""
    for value, since in [
        (json.dumps({"since": "x" * 40}).encode(), "x" * 40),
        (json.dumps({"since": "x" * 41}).encode(), ""),
        (json.dumps({"since": 5}).encode(), ""),
        (json.dumps(["since"]).encode(), ""),
        (b"\xff", ""),
    ]:
        kv = {**_holder_kv("m1", 1, 2), "value": b(value)}
        assert semaphore.parse_holder(kv, KEYS).since == since
    bare = {"key": b(KEYS.holder("m1"))}  # gateway left out lease, revision and value
    assert semaphore.parse_holder(bare, KEYS) == semaphore.Holder("m1", "", 0, 0)


def test_holders_in_order_of_taking_then_id() -> None:
    snap = semaphore.parse_snapshot(
        KEYS, _answer([], [_holder_kv("m3", 1, 5), _holder_kv("m2", 1, 9), _holder_kv("m1", 1, 5)])
    )
    assert [h.id for h in snap.holders] == ["m1", "m3", "m2"]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"responses": "x"}, "etcd: the read transaction did not return two ranges"),
        ({"responses": [{}, {}, {}]}, "etcd: the read transaction did not return two ranges"),
        ({"responses": [5, {}]}, "etcd: a range response is not an object"),
        ({"responses": [{"response_range": []}, {}]}, "etcd: a range response is not an object"),
        ({"responses": [{"response_range": {"kvs": {}}}, {}]},
         "etcd: a range response has no usable kvs list"),
        ({"responses": [{"response_range": {"kvs": [{}] * 2001}}, {}]},
         "etcd: a range response has no usable kvs list"),
        ({"responses": [{"response_range": {"kvs": [5]}}, {}]},
         "etcd: a range response holds a non-object kv"),
        ("x", "etcd: the transaction response is not an object"),
    ],
)  # fmt: skip
def test_malformed_transaction_answers(answer: object, message: str) -> None:
    with pytest.raises(DataError) as info:
        semaphore.parse_snapshot(KEYS, answer)
    assert info.value.message == message


def test_snapshot_without_a_header_and_with_a_maximum() -> None:
    """No header (proto3 JSON may leave it out): revision 0; the maximum's mod revision is the
    one the acquire compares."""
    max_kv: dict[str, object] = {"key": b(KEYS.max), "value": b(b"3"), "mod_revision": "11"}
    answer = _answer([max_kv], [_holder_kv("m1", 1, 2)] * 1)
    del answer["header"]
    snap = semaphore.parse_snapshot(KEYS, answer)
    assert (snap.group, snap.max, snap.max_revision, snap.revision) == ("workers", 3, 11, 0)
    compare = semaphore.acquire_txn(KEYS, snap, "m2", 1, "t")["compare"]
    assert compare[0]["mod_revision"] == "1" and compare[1]["mod_revision"] == "11"


def test_set_max_transaction() -> None:
    snap = semaphore.Snapshot("workers", 1, 13, (), 20)
    assert semaphore.set_max_txn(KEYS, snap, 0) == {
        "compare": [{"key": b(KEYS.max), "target": "MOD", "result": "EQUAL",
                     "mod_revision": "13"}],
        "success": [{"request_put": {"key": b(KEYS.max), "value": b(b"0")}}],
    }  # fmt: skip
    assert semaphore.set_max_txn(KEYS, snap, 1000)["success"][0]["request_put"]["value"] == b(
        b"1000"
    )
    for bad in (-1, 1001):
        with pytest.raises(DataError) as info:
            semaphore.set_max_txn(KEYS, snap, bad)
        assert info.value.message == f"the maximum must be 0..1000, not {bad}"


def test_groups_in_ignores_keys_outside_the_prefix() -> None:
    keys = [b"other/a/max", b"updater/reboot-lock-x/b/max", b"updater/reboot-lock/c/max",
            b"updater/reboot-lock/c/holders/y"]  # fmt: skip
    answer = {"kvs": [{"key": b(k)} for k in keys]}
    assert semaphore.groups_in("/updater/reboot-lock/", answer) == ["c"]
    assert semaphore.groups_in("updater/reboot-lock", {}) == []


# --- gateway answers at their limits, bytes that are not ASCII, each field's refusal ------------


def test_a_range_of_exactly_twice_the_holder_limit_is_read() -> None:
    keys = [b"updater/reboot-lock/g%d/max" % (i % 7) for i in range(2000)]
    answer = {"kvs": [{"key": b(k)} for k in keys]}
    assert semaphore.groups_in("updater/reboot-lock", answer) == [f"g{i}" for i in range(7)]


def test_groups_in_skips_a_group_name_that_is_not_ascii() -> None:
    keys = [b"updater/reboot-lock/caf\xc3\xa9/max", b"updater/reboot-lock/\xff/max",
            b"updater/reboot-lock/a/max"]  # fmt: skip
    answer = {"kvs": [{"key": b(k)} for k in keys]}
    assert semaphore.groups_in("updater/reboot-lock", answer) == ["a"]


def _snapshot_error(answer: object) -> str:
    with pytest.raises(DataError) as info:
        semaphore.parse_snapshot(KEYS, answer)
    return info.value.message


def test_a_holder_id_that_is_not_ascii_is_refused_by_name() -> None:
    kv = _holder_kv("m1", 1, 2)
    kv["key"] = b(KEYS.holders + b"caf\xc3\xa9")
    assert _snapshot_error(_answer([], [kv])) == (
        "lock holder id 'caf\ufffd\ufffd' is not 1-128 of A-Z a-z 0-9 . _ : @ -"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("key", b(b"elsewhere/m1"), "etcd: a holder key lies outside the semaphore"),
        ("lease", "x", "etcd: a lease id is not a whole number"),
        ("create_revision", "-1", "etcd: a revision is not a whole number"),
    ],
)
def test_holder_field_refusal_texts(field: str, value: str, message: str) -> None:
    kv = _holder_kv("m1", 1, 2)
    kv[field] = value
    assert _snapshot_error(_answer([], [kv])) == message


def test_maximum_field_refusal_texts() -> None:
    answer = _answer([{"key": b(KEYS.max), "value": b(b"3"), "mod_revision": "x"}], [])
    assert _snapshot_error(answer) == "etcd: a revision is not a whole number"
    answer = _answer([{"key": b(KEYS.max), "mod_revision": "3"}], [])
    assert _snapshot_error(answer) == "etcd: the semaphore maximum '' is not 0..1000"
    answer = _answer([], [])
    answer["header"] = {"revision": "x"}
    assert _snapshot_error(answer) == "etcd: a revision is not a whole number"


@pytest.mark.parametrize(("text", "shown"), [(b"caf\xc3\xa9", "'caf\ufffd\ufffd'"),
                                             (b"\xff", "'\ufffd'")])  # fmt: skip
def test_a_maximum_that_is_not_ascii_is_refused(text: bytes, shown: str) -> None:
    with pytest.raises(DataError) as info:
        semaphore.parse_max(text)
    assert info.value.message == f"etcd: the semaphore maximum {shown} is not 0..1000"


def test_ranges_left_out_of_the_answer_are_empty() -> None:
    """proto3 JSON leaves out an empty message: a part without response_range is no keys."""
    snap = semaphore.parse_snapshot(KEYS, {"header": {"revision": "5"}, "responses": [{}, {}]})
    assert (snap.max, snap.holders, snap.revision) == (1, (), 5)
