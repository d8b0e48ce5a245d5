"""A delegated role reached through two delegators must be verified against each of them.

The "diamond" of the TUF conformance suite (``test_cached_role_is_verified_against_current_
delegator``): targets delegates team-a/* to parent-a and team-b/* to parent-b; both delegate
to the same role name "release", each with its own key, and "release" is signed only with
parent-a's. Looked up through parent-a it is valid; through parent-b, in the same client, it
must not be, even though it is already cached. python-tuf before 7.0.1 trusted the cached copy
by name; the client relies on the release that checks it per delegator (pyproject's lower
bound), and this test keeps it so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import DelegatedRole, Delegations, Metadata, MetaFile, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from tests.unit.memrepo import MemoryRepo
from updater.errors import VerificationError
from updater.repo.repository import Expiry


def _publish(m: MemoryRepo, name: str, signed: Targets, signer: CryptoSigner) -> None:
    md = Metadata(signed)
    md.sign(signer)
    m.storage.files[f"metadata/1.{name}.json"] = md.to_bytes(JSONSerializer())
    m.repo.snapshot_md().signed.meta[f"{name}.json"] = MetaFile(1)


def test_a_cached_role_is_verified_against_the_current_delegator(tmp_path: Path) -> None:
    m = MemoryRepo()
    expires = m.repo.targets_md().signed.expires
    parents = {name: CryptoSigner.generate_ed25519() for name in ("parent-a", "parent-b")}
    release_keys = {name: CryptoSigner.generate_ed25519() for name in parents}
    for name, signer in parents.items():
        team = "team-a/*" if name == "parent-a" else "team-b/*"
        role = DelegatedRole("release", [], 1, False, [team])
        parent = Targets(expires=expires, delegations=Delegations({}, {"release": role}))
        parent.add_key(release_keys[name].public_key, "release")
        _publish(m, name, parent, signer)
    release = Targets(expires=expires)
    for team in ("team-a", "team-b"):
        release.targets[f"{team}/file"] = TargetFile.from_data(f"{team}/file", team.encode())
    _publish(m, "release", release, release_keys["parent-a"])  # parent-a's key only

    def delegate(targets: Targets) -> None:
        roles = {
            name: DelegatedRole(name, [], 1, False, [f"team-{name[-1]}/*"]) for name in parents
        }
        targets.delegations = Delegations({}, roles)
        for name, signer in parents.items():
            targets.add_key(signer.public_key, name)

    m.repo.change_targets(delegate, Expiry())

    client = m.client(tmp_path / "cache")
    through_a = client.target("team-a/file")
    assert through_a is not None and through_a.path == "team-a/file"
    with pytest.raises(VerificationError, match="not signed by enough trusted keys"):
        client.target("team-b/file")
