"""The ssh config as titanenv reads it: Include, known_hosts files, host key policy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from paramiko.hostkeys import HostKeys

from titanenv.remote.connection import load_known_hosts
from titanenv.remote.errors import RemoteError
from titanenv.remote.sshconfig import (
    host_key_policy,
    host_name_problem,
    known_hosts_files,
    load_ssh_config,
    split_destination,
    user_name_problem,
)


def test_include_is_spliced_in_like_openssh(isolated_home: Path) -> None:
    ssh = isolated_home / ".ssh"
    (ssh / "conf.d").mkdir(parents=True)
    (ssh / "conf.d" / "10-jsc.conf").write_text("Host jwb\n  HostName juwels-booster.fz-juelich.de\n  User smith1\n")
    (ssh / "conf.d" / "20-jump.conf").write_text("Host jump\n  HostName gate.example.org\n")
    (ssh / "extra").write_text("  Port 2222\n")
    (ssh / "config").write_text(
        "Include conf.d/*.conf\n"
        "Host box\n"
        "  Include extra\n"  # inside a block: applies to that block
        "  HostName box.example.org\n"
        "Host *\n"
        "  ProxyJump jump\n"
    )
    config = load_ssh_config()
    jwb = config.lookup("jwb")
    assert (jwb["hostname"], jwb["user"], jwb["proxyjump"]) == ("juwels-booster.fz-juelich.de", "smith1", "jump")
    box = config.lookup("box")
    assert (box["hostname"], box["port"]) == ("box.example.org", "2222")
    assert "port" not in config.lookup("jwb")


def test_include_in_a_block_that_opens_blocks_keeps_the_rest_in_the_outer_block(tmp_path: Path) -> None:
    (tmp_path / "inner").write_text("Host other\n  User someone\n")
    main = tmp_path / "config"
    main.write_text(f"Host box\n  Include {tmp_path / 'inner'}\n  User me\n")
    config = load_ssh_config(str(main))
    assert config.lookup("box")["user"] == "me"
    assert config.lookup("other")["user"] == "someone"


def test_missing_named_config_and_include_loops(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="ssh config file .* does not exist"):
        load_ssh_config(str(tmp_path / "nope"))
    loop = tmp_path / "loop"
    loop.write_text(f"Include {loop}\n")
    with pytest.raises(RemoteError, match="Include nested more than 16 deep"):
        load_ssh_config(str(loop))


def test_known_hosts_files_and_policy_follow_the_ssh_config(isolated_home: Path) -> None:
    user, system = known_hosts_files({})
    assert user[0] == isolated_home / ".ssh" / "known_hosts"
    assert system[0] == Path("/etc/ssh/ssh_known_hosts")
    user, system = known_hosts_files({"userknownhostsfile": "~/a \"/b c\"", "globalknownhostsfile": "none"})
    assert (user, system) == ([isolated_home / "a", Path("/b c")], [])
    assert host_key_policy({}, "") == "ask"
    assert host_key_policy({"stricthostkeychecking": "yes"}, "") == "strict"
    assert host_key_policy({"stricthostkeychecking": "accept-new"}, "") == "accept-new"
    # `no` would let OpenSSH accept a changed key; here it only accepts new ones.
    assert host_key_policy({"stricthostkeychecking": "no"}, "") == "accept-new"
    assert host_key_policy({"stricthostkeychecking": "accept-new"}, "strict") == "strict"


def test_known_hosts_markers_and_bad_lines_are_skipped(tmp_path: Path) -> None:
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIGjEXhuZH6HUi5d2duQvLKIkPQtWIRLVOTnWFIrkfRYY"
    known = tmp_path / "known_hosts"
    known.write_text(
        "# comment\n"
        f"@cert-authority *.example.org ssh-ed25519 {key}\n"
        "garbage\n"
        f"[login.example.org]:2222 ssh-ed25519 {key}\n"
        "host ssh-ed25519 not-base64!!\n"
    )
    keys = HostKeys()
    load_known_hosts(keys, known)
    assert keys.lookup("[login.example.org]:2222")["ssh-ed25519"].get_base64() == key
    assert keys.lookup("x.example.org") is None


# Names OpenSSH takes and names it refuses (its fix for CVE-2023-51385), as `user@host`.
DESTINATIONS = [
    "jwb", "juwels-booster.fz-juelich.de", "127.0.0.1", "jwb%x", "jwb#x", "jwb!x", "jwb*", "h\u00f6st",
    "jwb;x", "jwb$(touch${IFS}x)", "jwb`id`", "a;touch${IFS}y;b", "jwb,x", "jwb\\x", "jwb x", "jwb\tx",
    "jwb\nx", "jwb\x7fx", "-oProxyCommand=touch${IFS}x", "jwb'x", 'jwb"x', "jwb|x", "jwb&x", "jwb<x", "jwb(x)",
    "jwb{x}",
    "smith1@jwb", "a$b@jwb", "a b@jwb", "a,b@jwb", "dom\\user@jwb", "a;b@jwb", "a -b@jwb", "ab\\@jwb",
    "-l@jwb", "a`id`@jwb", "a(b)@jwb", "a|b@jwb", "a\nb@jwb",
]


def _titanenv_refuses(destination: str) -> bool:
    user, _, host = destination.rpartition("@")
    return bool(host_name_problem(host) or (user and user_name_problem(user)))


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the Debian package openssh-client (ssh)")
@pytest.mark.parametrize("destination", DESTINATIONS)
def test_names_are_refused_exactly_where_openssh_refuses_them(destination: str, tmp_path: Path) -> None:
    """`ssh -G` (no connection) is the reference: same verdict for every name."""
    openssh = subprocess.run(
        ["ssh", "-F", "/dev/null", "-G", "--", destination], capture_output=True, text=True, env={"HOME": str(tmp_path)}
    )
    refused = "contains invalid characters" in openssh.stderr
    assert refused or openssh.returncode == 0, openssh.stderr
    assert _titanenv_refuses(destination) == refused, (destination, openssh.stderr)


def test_a_refused_name_is_one_line_naming_it_and_where_it_came_from() -> None:
    with pytest.raises(RemoteError) as caught:
        split_destination("jwb$(touch${IFS}x)", "fab -H")
    assert str(caught.value) == (
        "fab -H: host name 'jwb$(touch${IFS}x)' contains '$', which OpenSSH refuses in host names "
        "(a ProxyCommand or Match exec line would hand it to a shell)"
    )
    with pytest.raises(RemoteError, match=r"^ProxyJump of 'x' in the ssh config: user name '-l' starts with '-'"):
        split_destination("-l@jump", "ProxyJump of 'x' in the ssh config")
    with pytest.raises(RemoteError, match=r"^--host: 'jwb:ssh' has no port number after ':'"):
        split_destination("jwb:ssh", "--host")
    assert split_destination("me@jwb:2222", "fab -H") == ("me", "jwb", 2222)
    assert split_destination("::1", "fab -H") == (None, "::1", None)


def test_a_proxycommand_is_run_as_the_ssh_config_expanded_it(tmp_path: Path) -> None:
    """Fabric parsed it again under `Host <hostname>`, a KeyError where the name is no pattern of itself."""
    import sys

    from titanenv.remote.connection import ProjectConnection, fabric_config

    seen = tmp_path / "seen"
    config_file = tmp_path / "config"
    relay = "import sys; print('up', flush=True); sys.stdin.read()"
    config_file.write_text(f'Host *\n  ProxyCommand sh -c "echo %h:%p > {seen}; exec {sys.executable} -c \\"{relay}\\""\n')
    cxn = ProjectConnection("box[1]", config=fabric_config(str(config_file)))
    proxy = cxn.open_gateway()
    try:
        assert proxy.recv(3) == b"up\n"
    finally:
        proxy.close()
    assert seen.read_text() == "box[1]:22\n"
