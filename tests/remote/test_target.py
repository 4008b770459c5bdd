"""Which machine a host is and where its checkout lives (no SSH needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from titanenv.config import known_machines, load_config
from titanenv.errors import ConfigError
from titanenv.remote.errors import RemoteError
from titanenv.remote.target import machine_for_host, remote_checkout, resolve_target

KNOWN = known_machines(REPO_ROOT)


def test_project_defaults_map_site_login_names_to_profiles() -> None:
    hosts = load_config(REPO_ROOT).settings.remote.hosts
    expect = {
        "jwb": "jwb",
        "juwels-booster.fz-juelich.de": "jwb",
        "juwels-cluster.fz-juelich.de": "jwc",
        "jureca.fz-juelich.de": "jrc",
        "jupiter.fz-juelich.de": "jpb",
        "alogin1.bsc.es": "mn5a",
    }
    for name, machine in expect.items():
        assert machine_for_host(hosts, [name], KNOWN) == machine, name


def test_exact_alias_wins_then_patterns_in_order_then_profile_names() -> None:
    hosts = {"j*": "jwc", "jbooster": "jwb"}
    assert machine_for_host(hosts, ["jbooster"], KNOWN) == "jwb"
    assert machine_for_host(hosts, ["jx"], KNOWN) == "jwc"
    # An alias maps through the HostName it stands for.
    assert machine_for_host(hosts, ["mybox", "jx.example"], KNOWN) == "jwc"
    assert machine_for_host({}, ["jrc"], KNOWN) == "jrc"
    assert machine_for_host({}, ["somewhere"], KNOWN) is None


def test_checkout_is_expanded_with_the_hosts_profile_and_login_name() -> None:
    jwb = load_config(REPO_ROOT, flags={"machine": "jwb"})
    assert remote_checkout(jwb, "smith1") == "/p/project1/trustllm-eu/smith1/torchtitan/titanenv"
    mn5 = load_config(REPO_ROOT, flags={"machine": "mn5a"})
    assert remote_checkout(mn5, "bsc123456") == "/gpfs/projects/ehpc09/bsc123456/torchtitan/titanenv"


def test_remote_home_stays_for_the_remote_shell(isolated_home: Path) -> None:
    local = load_config(REPO_ROOT)
    path = remote_checkout(local, "alice")
    assert path == "~/trustllm/project/trustllm/alice/torchtitan/titanenv"
    assert str(isolated_home) not in path


def test_checkout_template_errors_name_the_key(isolated_home: Path) -> None:
    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("remote:\n  checkout: '{scratch_dir}/env_{arch}/titanenv'\n")
    local = load_config(REPO_ROOT)  # local detects its architecture: unknown for a remote host
    with pytest.raises(ConfigError, match=r"config.yaml:2: remote.checkout: unknown placeholder \{arch\}"):
        remote_checkout(local, "alice")
    user_file.write_text("remote:\n  checkout: 'relative/titanenv'\n")
    with pytest.raises(ConfigError, match="must be absolute or start with ~/"):
        remote_checkout(load_config(REPO_ROOT), "alice")


def test_host_mapping_errors(isolated_home: Path) -> None:
    with pytest.raises(RemoteError, match=r"no machine profile for host 'localhost'.*remote: \{hosts: \{localhost: jwb\}\}"):
        resolve_target(REPO_ROOT, "localhost", hostname="localhost", login_user="me")
    with pytest.raises(RemoteError, match="unknown host 'nowhere.invalid'"):
        resolve_target(REPO_ROOT, "nowhere.invalid", hostname="nowhere.invalid", login_user="me")
    user_file = isolated_home / ".config" / "titanenv" / "config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("remote:\n  hosts: {box: nosuch}\n")
    with pytest.raises(ConfigError, match="host 'box' maps to 'nosuch', which is no machine profile"):
        resolve_target(REPO_ROOT, "me@box:2222", hostname="box.example", login_user="me")
    user_file.write_text("remote:\n  hosts: {box: jwb}\n")
    target = resolve_target(REPO_ROOT, "me@box:2222", hostname="box.example", login_user="me")
    assert (target.machine, target.checkout) == ("jwb", "/p/project1/trustllm-eu/me/torchtitan/titanenv")
