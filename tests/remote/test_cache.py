"""Resolved hosts are cached until something they were computed from changes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import titanenv.config
from tests.helpers import REPO_ROOT
from titanenv.remote.cache import TargetResolver


def write_user_file(home: Path, text: str) -> Path:
    path = home / ".config" / "titanenv" / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def forbid_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the configuration was loaded")

    monkeypatch.setattr(titanenv.config, "load_config", refuse)


def test_second_resolution_comes_from_the_cache_until_a_file_changes(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user_file = write_user_file(isolated_home, "remote:\n  hosts: {box: jwb}\n  connect_timeout: 7\n")
    first = TargetResolver(REPO_ROOT).target("box", hostname="box.example", login_user="me")
    assert (first.machine, first.settings.connect_timeout) == ("jwb", 7)
    with monkeypatch.context() as patched:
        forbid_loading(patched)
        again = TargetResolver(REPO_ROOT)
        assert again.target("box", hostname="box.example", login_user="me") == first
        assert again.ssh_config() == ""
    user_file.write_text("remote:\n  hosts: {box: jrc}\n  connect_timeout: 9\n")
    os.utime(user_file, ns=(1, 1))  # a different mtime even within one clock tick
    changed = TargetResolver(REPO_ROOT).target("box", hostname="box.example", login_user="me")
    assert (changed.machine, changed.settings.connect_timeout) == ("jrc", 9)


def test_env_variables_and_other_hosts_are_resolved_afresh(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_user_file(isolated_home, "remote:\n  hosts: {box: jwb}\n")
    TargetResolver(REPO_ROOT).target("box", hostname="box.example", login_user="me")
    monkeypatch.setenv("INVOKE_REMOTE_CHECK_COMMIT", "false")
    assert TargetResolver(REPO_ROOT).target("box", hostname="box.example", login_user="me").settings.check_commit is False
    # Another login name fills the checkout path differently.
    other = TargetResolver(REPO_ROOT).target("box", hostname="box.example", login_user="you")
    assert "/you/" in other.checkout


def test_a_damaged_cache_is_ignored(isolated_home: Path) -> None:
    write_user_file(isolated_home, "remote:\n  hosts: {box: jwb}\n")
    resolver = TargetResolver(REPO_ROOT)
    resolver.target("box", hostname="box.example", login_user="me")
    resolver.path.write_text("{not json")
    assert TargetResolver(REPO_ROOT).target("box", hostname="box.example", login_user="me").machine == "jwb"


def test_the_fingerprint_covers_every_module_that_resolves_a_target() -> None:
    """Not a hand-kept list: config/paths.py and config/sources.py were missing from one."""
    from titanenv.remote import cache

    code = {path.relative_to(cache._PACKAGE).as_posix() for path in cache._code()}
    assert {"config/paths.py", "config/sources.py", "config/loader.py", "config/schema.py", "remote/target.py"} <= code
