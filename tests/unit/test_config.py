"""The configuration file: the settings table, TOML values, errors, and the reference."""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path

import pytest

from updater import config
from updater.agent import schedule
from updater.cmdline import Delivery
from updater.config import BootSettings, Config, RebootVia, UpdateSettings
from updater.errors import UsageError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_key_parsed() -> None:
    cfg = config.parse(
        "# comment\n[boot]\n"
        'extra_args = "console=ttyS1 panic=10 foo=\\"a b\\""\n'
        "reuse_cmdline = true\n"
        'drop_args = ["quiet"]\n'
        'delivery = "initrd"\n'
        "verity = false\n"
        'arch = "aarch64"\n'
        "[update]\n"
        'repo = "https://updates.example.org/flatcar/"\n'
        'trusted_root = "/etc/updater/root.json"\n'
        'state_dir = "/srv/updater"\n'
        'channel = "beta"\n'
        'reboot = "kexec"\n'
        "timeout = 5\n"
        "retries = 0\n",
        "x.toml",
    )
    assert cfg == Config(
        boot=BootSettings(
            extra_args=("console=ttyS1", "panic=10", 'foo="a b"'),
            reuse_cmdline=True,
            drop_args=("quiet",),
            delivery=Delivery.INITRD,
            verity=False,
            arch="arm64",
        ),
        update=UpdateSettings(
            repo="https://updates.example.org/flatcar",
            trusted_root="/etc/updater/root.json",
            state_dir="/srv/updater",
            channel="beta",
            reboot=RebootVia.KEXEC,
            timeout=5.0,
            retries=0,
        ),
        source="x.toml",
    )


def test_empty_file_is_every_default() -> None:
    cfg = config.parse("", "empty.toml")
    assert cfg.boot == BootSettings() and cfg.update == UpdateSettings()
    assert cfg.boot.drop_args == ("rhgb", "quiet") and cfg.update.reboot is RebootVia.NONE


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86_64"), ("aarch64", "arm64"), ("amd64", "x86_64"), ("riscv64", "riscv64")],
)
def test_native_arch(machine: str, arch: str) -> None:
    assert config.native_arch(machine) == arch


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nope]\n", r"unknown section \[nope\] \(known: boot, update, agent, lock, health, "
                     r"install, hooks, quiesce, checkpoint\)"),
        ("[boot]\nnope = 1\n", r"unknown setting \[boot\] nope \(known: extra_args, "),
        ("boot = 1\n", "boot must be a \\[section\\]"),
        ('[boot]\nverity = "yes"\n', r"\[boot\] verity must be true or false"),
        ('[boot]\ndelivery = "email"\n', "must be one of cmdline, initrd"),
        ('[boot]\narch = "mips"\n', "must be one of x86_64, arm64"),
        ("[boot]\nextra_args = 3\n", "must be a string or a list of strings"),
        ('[boot]\nextra_args = ["a b"]\n', "is not exactly one kernel argument"),
        ('[boot]\nextra_args = "a\\u0007b"\n', "control characters"),
        ('[update]\nrepo = "ftp://x"\n', "http:// or https:// URL or an absolute directory"),
        ('[update]\nrepo = "relative/dir"\n', "URL or an absolute directory"),
        ('[update]\nstate_dir = "var/lib"\n', "must be an absolute path"),
        ('[update]\nchannel = "Stable!"\n', "must be 1-64 of a-z"),
        ("[update]\ntimeout = 0\n", "from 1 to 3600"),
        ("[update]\ntimeout = true\n", "from 1 to 3600"),
        ("[update]\nretries = 21\n", "from 0 to 20"),
        ("[update]\nretries = 1.5\n", "from 0 to 20"),
        ('[update]\nreboot = "later"\n', "kexec, firmware, none"),
        ("[boot\n", "x.toml: "),
    ],
)
def test_errors_name_file_section_and_key(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        config.parse(text, "x.toml")
    assert info.value.message.startswith("x.toml: ")
    assert "\n" not in info.value.message
    assert info.value.exit_code == 2


def test_decode_refuses_non_utf8_and_huge_files() -> None:
    with pytest.raises(UsageError, match=r"x.toml: not UTF-8 text \(byte 7\)"):
        config.decode(b"[boot]\n\xff", "x.toml")
    with pytest.raises(UsageError, match="more than"):
        config.decode(b"#" * (config.MAX_CONFIG_BYTES + 1), "x.toml")


def test_load_missing_default_and_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "CONFIG_PATH", str(tmp_path / "updater.toml"))
    monkeypatch.setattr(config, "LEGACY_BOOT_CONF", str(tmp_path / "boot.conf"))
    assert config.load() == Config()
    with pytest.raises(UsageError, match="no such configuration file"):
        config.load(str(tmp_path / "other.toml"))
    (tmp_path / "updater.toml").write_text('[boot]\ndelivery = "initrd"\n')
    assert config.load().boot.delivery is Delivery.INITRD
    (tmp_path / "boot.conf").write_text("DELIVERY=initrd\n")
    with pytest.raises(UsageError, match="boot.conf is no longer read") as info:
        config.load()
    assert info.value.hint is not None and "[boot]" in info.value.hint


def test_overrides_leave_none_alone() -> None:
    cfg = config.with_overrides(Config(), "update", channel="beta", repo=None)
    assert cfg.update.channel == "beta" and cfg.update.repo == ""


def test_show_writes_toml_that_parses_back() -> None:
    original = Config(boot=BootSettings(extra_args=('a="b c"', "d")), source=None)
    text = "[boot]\n" + "".join(
        f"{key} = {config.show(getattr(original.boot, key))}\n"
        for key in config.as_dict(original)["boot"]
    )
    assert config.parse(text, "x").boot == original.boot


def test_reference_lists_every_setting_once() -> None:
    ref = config.reference()
    for s in config.SETTINGS:
        assert len(re.findall(rf"^\| `{re.escape(s.key)}` \|", ref, re.M)) >= 1
    assert ref.count("| key | default | meaning |") == len(config.SECTIONS)


def test_readme_carries_the_reference() -> None:
    """The README's configuration section is exactly what the table renders."""
    assert config.reference() in README.read_text()


def test_agent_lock_and_health_sections() -> None:
    cfg = config.parse(
        "[agent]\ninterval = 600\njitter = 0.2\nchannel = \"beta\"\nversion = \"3.1\"\n"
        'reboot = "off"\ntimezone = "Europe/Berlin"\nmachine_id_file = "/srv/machine-id"\n'
        'metrics_file = ""\nreboot_required_file = "/tmp/rr"\n'
        'windows = [{days = ["Sat", "sun"], start = "02:00", minutes = 90}]\n'
        '[lock]\nbackend = "etcd"\nendpoints = ["http://10.0.0.1:2379/", "https://e:2379"]\n'
        'group = "workers.eu-1"\nid = "node-7"\nttl = 600\nretry = 5\nprefix = "fleet/locks"\n'
        "timeout = 3\n"
        '[health]\ncommands = ["curl -fsS \'http://localhost/health z\'", ["/bin/true", "-x"]]\n'
        'units = ["sshd.service", "getty@tty1.service"]\ntimeout = 20\ndeadline = 120\n'
        "interval = 2\n",
        "x.toml",
    )
    a, lk, h = cfg.agent, cfg.lock, cfg.health
    assert (a.interval, a.jitter, a.channel, a.version, a.reboot) == (
        600.0, 0.2, "beta", "3.1", config.RebootStrategy.OFF)
    assert a.windows == (schedule.Window((5, 6), time(2, 0), 90),)
    assert (a.timezone, a.machine_id_file) == ("Europe/Berlin", "/srv/machine-id")
    assert a.metrics_file == ""
    assert lk.backend is config.LockBackend.ETCD
    assert lk.endpoints == ("http://10.0.0.1:2379", "https://e:2379")
    assert (lk.group, lk.id, lk.ttl, lk.retry, lk.prefix) == ("workers.eu-1", "node-7", 600.0,
                                                              5.0, "fleet/locks")
    assert h.commands == (("curl", "-fsS", "http://localhost/health z"), ("/bin/true", "-x"))
    assert h.units == ("sshd.service", "getty@tty1.service") and h.deadline == 120.0
    shown = "[agent]\n" + "".join(f"{k} = {config.show(getattr(a, k))}\n"
                                  for k in config.as_dict(cfg)["agent"])
    assert config.parse(shown, "y").agent == a, "show writes windows back as TOML"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[agent]\nreboot = "later"\n', "kexec, firmware, off"),
        ("[agent]\njitter = 0.9\n", "from 0 to 0.5"),
        ("[agent]\ninterval = 0\n", "from 1 to"),
        ('[agent]\ntimezone = "../../etc/passwd"\n', "time zone name"),
        ('[agent]\nwindows = [{days = ["Sat"], start = "2am", minutes = 5}]\n', "HH:MM"),
        ('[agent]\nwindows = "Sat 02:00"\n', "must be a list"),
        ('[lock]\nbackend = "zookeeper"\n', "none, etcd, fleetlock"),
        ('[lock]\nendpoints = ["etcd:2379"]\n', "is not an http:// or https:// URL"),
        ('[lock]\ngroup = "a b"\n', "FleetLock's rule"),
        ('[lock]\nid = "a/b"\n', "must be 1-128"),
        ("[lock]\nttl = 1\n", "from 2 to"),
        ('[lock]\nprefix = "/abs/"\n', "key words joined by /"),
        ('[health]\ncommands = ["unterminated \'quote"]\n', "No closing quotation"),
        ('[health]\ncommands = [""]\n', "is empty"),
        ("[health]\ncommands = [[1]]\n", "is not a command string"),
        ('[health]\nunits = ["sshd"]\n', "is not a unit name"),
    ],
)
def test_agent_setting_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        config.parse(text, "x.toml")
