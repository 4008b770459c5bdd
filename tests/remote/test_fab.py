"""`fab -H HOST TASK ...` against the test suite's real sshd, directly and through jump hosts."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, run_invoke
from tests.remote.conftest import Laptop, error_lines, run_fab

pytestmark = pytest.mark.sshd


def head_commit() -> str:
    return subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()


def git(checkout: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True).stdout.strip()


def restore(laptop: Laptop, commit: str) -> None:
    """Put the session's checkout back at ``commit`` for the tests after this one."""
    if subprocess.run(["git", "-C", str(laptop.checkout), "cat-file", "-e", commit]).returncode != 0:
        laptop.fab("-H", "titan-login", "remote.bootstrap", "--force")
    git(laptop.checkout, "reset", "-q", "--hard", commit)
    git(laptop.checkout, "clean", "-q", "-f")
    for branch in git(laptop.checkout, "for-each-ref", "--format=%(refname:short)", "refs/heads/titanenv-backup-*").split():
        git(laptop.checkout, "branch", "-q", "-D", branch)


def only_error(result: subprocess.CompletedProcess[str], *phrases: str) -> str:
    """The single line printed, which must start with `error:` and contain ``phrases``."""
    # A note that this (development) checkout has uncommitted changes is no error.
    lines = [line for line in error_lines(result) if not line.startswith("note: uncommitted changes here are not")]
    assert result.returncode != 0, result
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


# --- the same task tree ---------------------------------------------------------


def test_fab_lists_the_same_tasks_and_help_as_invoke(isolated_home: Path) -> None:
    fab = run_fab("-H", "titan-login", "--list", home=isolated_home)
    inv = run_invoke("--list")
    assert fab.returncode == 0 and inv.returncode == 0, fab.stderr + inv.stderr
    assert "remote.bootstrap" in fab.stdout and "config.show" in fab.stdout
    assert fab.stdout == inv.stdout
    fab_help = run_fab("--help", "config.show", home=isolated_home)
    inv_help = run_invoke("--help", "config.show")
    # Past the usage line (which names the program), the help is the same.
    assert fab_help.stdout.splitlines()[0].endswith("[--core-opts] config.show [--options] [other tasks here ...]")
    assert fab_help.stdout.splitlines()[1:] == inv_help.stdout.splitlines()[1:]


# --- bootstrap and running tasks ------------------------------------------------------


def test_bootstrap_made_a_clone_at_this_commit_with_its_own_venv(laptop: Laptop) -> None:
    assert git(laptop.checkout, "rev-parse", "HEAD") == head_commit()
    python = laptop.checkout / ".venv" / "bin" / "python"
    where = subprocess.run(
        [str(python), "-c", "import titanenv; print(titanenv.__file__)"], cwd="/", capture_output=True, text=True, check=True
    )
    assert where.stdout.startswith(str(laptop.checkout)), where.stdout
    # Up to date now: a second bootstrap changes nothing and installs nothing.
    again = laptop.fab("-H", "titan-login", "remote.bootstrap")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Python environment up to date" in again.stdout
    status = laptop.fab("-H", "titan-login", "remote.status")
    assert status.returncode == 0, status.stderr
    assert "same as here" in status.stdout and ".venv up to date" in status.stdout


def test_tasks_run_in_the_remote_checkout_directly_and_through_jump_hosts(laptop: Laptop) -> None:
    server = laptop.server
    remote_home = pwd.getpwnam(server.user).pw_dir
    # The addresses the server was reached on, in order: the jump host is 127.0.0.2.
    route = {
        "titan-login": ["127.0.0.1"],
        "titan-via-jump": ["127.0.0.2", "127.0.0.1"],
        "titan-via-twin": ["127.0.0.1", "127.0.0.1"],
        "titan-via-two": ["127.0.0.2", "127.0.0.1", "127.0.0.1"],
    }
    for alias, hops in route.items():
        before = len(server.connections())
        # Two tasks in one command, with options, like invoke.
        result = laptop.fab("-H", alias, "config.show", "--key", "derived.project_dir", "config.machines")
        assert result.returncode == 0, result.stdout + result.stderr
        # Resolved there: under the remote user's home, not the laptop's.
        assert f"{remote_home}/trustllm/project" in result.stdout, result.stdout
        assert str(laptop.home) not in result.stdout
        assert "JUWELS Booster" in result.stdout
        assert server.connections()[before:] == hops, alias


def test_remote_exit_status_is_fabs_and_a_failure_stops_the_chain(laptop: Laptop) -> None:
    result = laptop.fab("-H", "titan-login", "config.show", "--format", "bad", "config.machines")
    assert result.returncode == 2, result
    assert "--format 'bad': use table, yaml or json" in result.stdout
    assert "JUWELS" not in result.stdout
    assert laptop.fab("-H", "titan-login", "remote.run", "exit 7").returncode == 7


def test_output_streams_while_the_remote_command_runs(laptop: Laptop, tmp_path: Path) -> None:
    go = tmp_path / "go"
    command = f"echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "-H", "titan-login", "remote.run", command],
        cwd=REPO_ROOT, env={**os.environ, "HOME": str(laptop.home)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "first\n"
        # The remote command is still waiting for us: "first" came while it ran.
        assert proc.poll() is None
        go.touch()
        assert proc.stdout.readline() == "second\n"
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_stops_the_remote_command(laptop: Laptop, tmp_path: Path) -> None:
    # `exec` so the PID printed is the sleeping process itself.
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "-H", "titan-login", "remote.run", "echo pid $$; exec sleep 300"],
        cwd=REPO_ROOT, env={**os.environ, "HOME": str(laptop.home)}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    remote_pid = 0
    try:
        line = proc.stdout.readline()
        assert line.startswith("pid "), line + proc.stderr.read()
        remote_pid = int(line.split()[1])
        os.kill(remote_pid, 0)  # running
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=60) != 0
        # fab returns once the host reported the command's end: it is gone.
        with pytest.raises(ProcessLookupError):
            os.kill(remote_pid, 0)
    finally:
        proc.kill()
        proc.wait()
        if remote_pid:
            try:
                os.kill(remote_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --- the remote checkout must match -------------------------------------------------


def test_missing_checkout_gives_the_bootstrap_hint(laptop: Laptop, tmp_path: Path) -> None:
    user_file = laptop.home / ".config" / "titanenv" / "config.yaml"
    user_file.write_text(user_file.read_text().replace(str(laptop.checkout), str(tmp_path / "nothing-here")))
    result = laptop.fab("-H", "titan-login", "config.show")
    only_error(result, "no titanenv checkout at", "fab -H titan-login remote.bootstrap")
    assert result.returncode == 1


def test_checkout_at_another_commit_is_refused_unless_told(laptop: Laptop) -> None:
    commit = head_commit()
    git(laptop.checkout, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "made there")
    try:
        refused = laptop.fab("-H", "titan-login", "config.machines")
        only_error(refused, f"this laptop at {commit[:12]}", "remote.bootstrap", "INVOKE_REMOTE_CHECK_COMMIT=false")
        allowed = laptop.fab("-H", "titan-login", "config.machines", env={"INVOKE_REMOTE_CHECK_COMMIT": "false"})
        assert allowed.returncode == 0 and "JUWELS" in allowed.stdout, allowed
        # The host's branch has a commit this laptop lacks: bootstrap keeps it unless --force.
        diverged = laptop.fab("-H", "titan-login", "remote.bootstrap")
        only_error(diverged, "has commits this laptop lacks", "--force")
        forced = laptop.fab("-H", "titan-login", "remote.bootstrap", "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert git(laptop.checkout, "rev-parse", "HEAD") == commit
        backups = git(laptop.checkout, "branch", "--list", "titanenv-backup-*")
        assert backups, "the host's own commit was not kept"
    finally:
        restore(laptop, commit)


def test_bootstrap_ships_missing_commits_and_keeps_local_changes(laptop: Laptop) -> None:
    commit = head_commit()
    parent = git(laptop.checkout, "rev-parse", "HEAD~1")
    branch = git(laptop.checkout, "symbolic-ref", "--short", "HEAD")
    # The host only has the parent commit: bootstrap must send the newest one.
    git(laptop.checkout, "reset", "-q", "--hard", parent)
    git(laptop.checkout, "reflog", "expire", "--expire=now", "--all")
    git(laptop.checkout, "gc", "-q", "--prune=now")
    assert subprocess.run(["git", "-C", str(laptop.checkout), "cat-file", "-e", commit]).returncode != 0
    (laptop.checkout / "notes.txt").write_text("mine\n")
    try:
        refused = laptop.fab("-H", "titan-login", "remote.bootstrap")
        only_error(refused, "has uncommitted changes", "--force")
        forced = laptop.fab("-H", "titan-login", "remote.bootstrap", "--force")
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert git(laptop.checkout, "rev-parse", "HEAD") == commit
        assert git(laptop.checkout, "symbolic-ref", "--short", "HEAD") == branch
        assert "notes.txt" in git(laptop.checkout, "stash", "show", "--include-untracked", "--name-only", "stash@{0}")
        assert not (laptop.checkout / "notes.txt").exists()
    finally:
        restore(laptop, commit)
        git(laptop.checkout, "stash", "clear")


# --- host keys ---------------------------------------------------------------------


def test_changed_host_key_is_refused(laptop: Laptop) -> None:
    result = laptop.fab("-H", "titan-changed-key", "config.machines")
    line = only_error(result, "HOST KEY CHANGED", "ssh-keygen -R")
    assert f"[127.0.0.1]:{laptop.server.port}" in line
    # Accepting new keys never accepts a changed one.
    again = laptop.fab("-H", "titan-changed-key", "config.machines", env={"INVOKE_REMOTE_HOST_KEY_POLICY": "accept-new"})
    only_error(again, "HOST KEY CHANGED")


def test_unknown_host_key_is_refused_unless_accepted_on_first_use(laptop: Laptop) -> None:
    known = laptop.server.root / "known_hosts_empty"
    known.write_text("")
    refused = laptop.fab("-H", "titan-unknown-key", "config.machines")
    only_error(refused, "unknown host key", "SHA256:", "accept-new")
    assert known.read_text() == ""
    accepted = laptop.fab("-H", "titan-unknown-key", "remote.bootstrap", "--accept-new-host-key")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "Permanently added" in accepted.stderr
    assert known.read_text().strip()
    # Recorded: the strict default now connects.
    again = laptop.fab("-H", "titan-unknown-key", "config.machines")
    assert again.returncode == 0, again.stdout + again.stderr
    known.write_text("")


# --- bad input ---------------------------------------------------------------------


def test_refused_user_key(laptop: Laptop) -> None:
    result = laptop.fab("-H", "titan-refused", "config.machines")
    only_error(result, "authentication refused", "stranger_key", "IdentityFile")


def test_unknown_host_alias(laptop: Laptop) -> None:
    mapped = laptop.fab("-H", "titan-nowhere.invalid", "config.machines")
    only_error(mapped, "unknown host 'titan-nowhere.invalid'")
    unmapped = laptop.fab("-H", "nowhere.invalid", "config.machines")
    only_error(unmapped, "unknown host 'nowhere.invalid'")


def test_host_without_machine_profile(laptop: Laptop) -> None:
    result = laptop.fab("-H", "localhost", "config.machines")
    only_error(result, "no machine profile for host 'localhost'", "remote: {hosts: {localhost: jwb}}")


def test_silent_host_times_out_in_seconds(laptop: Laptop) -> None:
    with socket.socket() as silent:  # accepts TCP (backlog) but never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        ssh_config = laptop.home / ".ssh" / "config"
        ssh_config.write_text(f"Host titan-silent\n  HostName 127.0.0.1\n  Port {port}\n" + ssh_config.read_text())
        result = laptop.fab("-H", "titan-silent", "config.machines", env={"INVOKE_REMOTE_CONNECT_TIMEOUT": "2"})
    only_error(result, "titan-silent", "no SSH answer within 2 s")


def test_unknown_task_is_one_line(laptop: Laptop) -> None:
    result = laptop.fab("-H", "titan-login", "data.nosuch")
    lines = error_lines(result)
    assert result.returncode == 1 and lines == ["No idea what 'data.nosuch' is!"], lines


def test_no_host_is_one_line(isolated_home: Path) -> None:
    result = run_fab("config.machines", home=isolated_home)
    assert result.returncode == 1
    assert error_lines(result) == ["error: fab runs tasks on a host: give one with -H HOST (to run them here, use invoke)"]


# --- host names that would reach a shell ---------------------------------------------

# stdin <-> one TCP connection: a ProxyCommand that needs no netcat.
PROXY = """
import os, socket, sys, threading
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def upstream():
    while data := os.read(0, 65536):
        sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := sock.recv(65536):
    os.write(1, data)
"""


def test_hostile_host_names_run_nothing_through_a_proxycommand(laptop: Laptop, tmp_path: Path) -> None:
    """An ordinary `Host *` ProxyCommand (and a `Match exec`) hands %h to a shell: OpenSSH's checks come first."""
    server = laptop.server
    proxy = tmp_path / "proxy.py"
    proxy.write_text(PROXY)
    seen = tmp_path / "proxied"  # one line per ProxyCommand run: the %h it got
    pwned = tmp_path / "pwned"
    key_type, key = server.known_hosts.read_text().split()[1:3]
    known = tmp_path / "known_hosts"
    known.write_text(f"[titan-proxied]:{server.port} {key_type} {key}\n")
    ssh_config = laptop.home / ".ssh" / "config"
    ssh_config.write_text(
        "Host titan-hop-bad\n"
        "  ProxyJump titan-j$(touch${IFS}%s)\n"
        "Match exec \"test %%h = titan-never\"\n"
        "  User nobody-else\n"
        "Host *\n"
        "  Port %d\n  User %s\n  IdentityFile %s\n  IdentitiesOnly yes\n"
        "  UserKnownHostsFile %s\n  GlobalKnownHostsFile none\n"
        '  ProxyCommand sh -c "echo %%h >> %s; exec %s %s 127.0.0.1 %%p"\n'
        % (pwned, server.port, server.user, server.root / "user_key", known, seen, sys.executable, proxy)
    )
    hostile = {
        # Mapped by `titan-*` to a profile, so nothing but the name check stops them.
        "titan-$(touch${IFS}%s)" % pwned: "fab -H: host name 'titan-$(touch${IFS}%s)' contains '$'" % pwned,
        "titan-x;touch${IFS}%s;b" % pwned: "contains ';', which OpenSSH refuses in host names",
        "titan-`touch${IFS}%s`" % pwned: "contains '`'",
        "-oProxyCommand=touch${IFS}%s" % pwned: "starts with '-', which OpenSSH refuses",
        "x;touch${IFS}%s@titan-proxied" % pwned: "fab -H: user name 'x;touch",
        "titan-hop-bad": "ProxyJump of 'titan-hop-bad' in the ssh config: host name 'titan-j$(touch",
    }
    for name, phrase in hostile.items():
        result = laptop.fab("-H", name, "remote.status")
        only_error(result, phrase)
        assert not pwned.exists(), name
        assert not seen.exists(), name
    # The same ProxyCommand still takes a normal name to the login node.
    result = laptop.fab("-H", "titan-proxied", "config.machines")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "JUWELS Booster" in result.stdout
    assert seen.read_text() == "titan-proxied\n"
    assert not pwned.exists()


# --- the library, in this process ---------------------------------------------------


def test_session_in_process_through_the_jump(laptop: Laptop) -> None:
    """Under pytest stdin is no terminal, so nothing is forwarded (Fabric's stdin thread would fail)."""
    from titanenv.remote.session import RemoteSession

    with RemoteSession(REPO_ROOT, "titan-via-jump") as session:
        probe = session.probe(commit=head_commit())
        assert (probe.exists, probe.is_git, probe.has_commit, probe.path) == (True, True, True, str(laptop.checkout))
        result = session.run("echo out; echo err >&2; exit 3", hide=True)
        assert (result.stdout, result.stderr, result.exited) == ("out\n", "err\n", 3)
        # The same connection serves every command.
        assert session.run_command("true") == 0 and session.connection.is_connected


def test_unknown_host_key_is_asked_about_on_a_terminal(laptop: Laptop) -> None:
    """Like OpenSSH's StrictHostKeyChecking ask: a terminal gets the fingerprint and a question."""
    import pty

    known = laptop.server.root / "known_hosts_empty"
    known.write_text("")
    argv = [sys.executable, "-m", "fabric", "-H", "titan-unknown-key", "config.machines"]
    env = {**os.environ, "HOME": str(laptop.home)}
    pid, terminal = pty.fork()  # fab gets a controlling terminal, as in a shell
    if pid == 0:
        try:
            os.chdir(REPO_ROOT)
            os.execve(sys.executable, argv, env)
        finally:
            os._exit(127)  # never return into pytest in the child
    seen = b""
    try:
        while b"(yes/no)? " not in seen:
            chunk = os.read(terminal, 4096)
            assert chunk, seen
            seen += chunk
        assert b"ssh-ed25519 key SHA256:" in seen
        os.write(terminal, b"yes\n")
        while True:
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: fab exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        _, status = os.waitpid(pid, 0)
        pid = 0
        assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
        assert b"JUWELS Booster" in seen
        assert known.read_text().strip()
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)
        known.write_text("")
