"""The POSIX shell scripts sent to the host: pure functions of typed inputs.

Every value is quoted with :func:`shlex.quote`; a path starting with ``~/``
becomes ``"$HOME"/...`` so the remote shell expands it. Each script is one
SSH command, so a task costs one round trip; its own checks print one
``error: ...`` line and exit 1 like a task's would.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Sequence

from titanenv.remote.target import RemoteTarget

PROBE_PREFIX = "titanenv-probe "
INSTALL_MARKER = ".venv/.titanenv-install"
BOOTSTRAP_HINT = "fab -H {host} remote.bootstrap"


def sh_path(path: str) -> str:
    """A shell word for a remote path; ``~`` and ``~/...`` expand to $HOME there."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _fail(message: str, *args: str) -> str:
    """``printf`` of an error line to stderr, then exit 1; ``args`` fill %s in ``message``."""
    return f"{{ printf {shlex.quote('error: ' + message + chr(10))} {' '.join(args)} >&2; exit 1; }}"


def preamble(target: RemoteTarget, *, pty: bool = False) -> list[str]:
    """Lines every script starts with: the configured shell setup, each checked."""
    lines = []
    if pty:
        # Plain \n line ends on the pseudo-terminal, so logs and pipes get no \r.
        lines.append("stty -onlcr 2>/dev/null")
    for line in target.settings.shell_setup:
        lines.append(f"{{ {line}\n}} || " + _fail("remote.shell_setup line `%s` failed on %s", shlex.quote(line), shlex.quote(target.host)))
    return lines


def _enter_checkout(target: RemoteTarget) -> str:
    host = shlex.quote(target.host)
    hint = shlex.quote(BOOTSTRAP_HINT.format(host=target.host))
    checkout = sh_path(target.checkout)
    return f"cd -- {checkout} 2>/dev/null || " + _fail(
        "no titanenv checkout at %s on %s: create it with `%s`", checkout, host, hint
    )


def task_script(target: RemoteTarget, commit: str | None, argv: Sequence[str], *, pty: bool = False) -> str:
    """Run ``invoke ARGV`` in the checkout, after checking it exists and is at ``commit``.

    ``commit`` None skips the commit check.
    """
    host = shlex.quote(target.host)
    hint = shlex.quote(BOOTSTRAP_HINT.format(host=target.host))
    lines = preamble(target, pty=pty)
    lines.append(_enter_checkout(target))
    lines.append(
        "[ -x .venv/bin/invoke ] || "
        + _fail("%s on %s has no Python environment (.venv/bin/invoke): run `%s`", '"$PWD"', host, hint)
    )
    if commit is not None:
        lines.append("head=$(git rev-parse -q --verify HEAD 2>/dev/null)")
        lines.append(
            f'[ "$head" = {shlex.quote(commit)} ] || '
            + _fail(
                "the checkout %s on %s is at %.12s, this laptop at %.12s: update it with `%s`, "
                "or run anyway with INVOKE_REMOTE_CHECK_COMMIT=false",
                '"$PWD"', host, '"${head:-no commit}"', shlex.quote(commit), hint,
            )
        )
    lines.append("exec .venv/bin/invoke " + shlex.join(argv))
    return "\n".join(lines) + "\n"


def command_script(target: RemoteTarget, command: str, *, pty: bool = False, in_checkout: bool = False) -> str:
    """A shell command, after the shell setup; in the checkout, or the home directory."""
    lines = preamble(target, pty=pty)
    if in_checkout:
        lines.append(_enter_checkout(target))
    return "\n".join([*lines, command]) + "\n"


@dataclass(frozen=True)
class Probe:
    """What the host's checkout looks like."""

    path: str
    exists: bool
    is_git: bool = False
    head: str = ""
    branch: str = ""
    branch_tip: str = ""
    dirty: bool = False
    installed: str = ""
    python_ok: bool = False
    empty: bool = True
    venv_ok: bool = False
    has_commit: bool = False


def probe_script(target: RemoteTarget, branch: str = "", commit: str = "") -> str:
    """Report path, HEAD, branch, local changes and install marker of the checkout.

    Also whether ``remote.python`` is at least 3.10 (needed only when the venv
    has to be made). ``branch`` is the laptop's branch, whose tip there matters
    when it is moved; ``commit`` the laptop's, which the host may already have.
    """
    out = f"printf '{PROBE_PREFIX}%s=%s\\n'"
    python = target.settings.python
    lines = preamble(target)
    lines += [
        f"{out} python_ok \"$({shlex.quote(python)} -c 'import sys; print(int(sys.version_info >= (3, 10)))' 2>/dev/null)\"",
        f"dir={sh_path(target.checkout)}",
        f'if ! cd -- "$dir" 2>/dev/null; then {out} path "$dir"; {out} exists 0; exit 0; fi',
        f'{out} path "$(pwd -P)"',
        f"{out} exists 1",
        f'{out} empty "$(ls -A | head -n 1)"',
        f"{out} venv_ok \"$(.venv/bin/python -c 'print(1)' 2>/dev/null)\"",
        f'{out} is_git "$(git rev-parse --is-inside-work-tree 2>/dev/null)"',
        f'{out} toplevel "$(git rev-parse --show-toplevel 2>/dev/null)"',
        f'{out} head "$(git rev-parse -q --verify HEAD 2>/dev/null)"',
        f'{out} branch "$(git symbolic-ref -q --short HEAD 2>/dev/null)"',
        f'{out} dirty "$(git status --porcelain 2>/dev/null | head -n 1)"',
        f'{out} installed "$(cat {INSTALL_MARKER} 2>/dev/null)"',
    ]
    if commit:
        lines.append(f'{out} has_commit "$(git cat-file -t {shlex.quote(commit)} 2>/dev/null)"')
    if branch:
        lines.append(f'{out} branch_tip "$(git rev-parse -q --verify {shlex.quote("refs/heads/" + branch)} 2>/dev/null)"')
    return "\n".join(lines) + "\n"


def parse_probe(stdout: str) -> Probe:
    values: dict[str, str] = {}
    for line in stdout.splitlines():
        if line.startswith(PROBE_PREFIX):
            key, _, value = line[len(PROBE_PREFIX):].partition("=")
            values[key] = value.strip()
    exists = values.get("exists") == "1"
    path = values.get("path", "")
    return Probe(
        path=path,
        exists=exists,
        # A directory inside some other repository is not a checkout of ours.
        is_git=values.get("is_git") == "true" and values.get("toplevel", "") == path,
        head=values.get("head", ""),
        branch=values.get("branch", ""),
        branch_tip=values.get("branch_tip", ""),
        dirty=bool(values.get("dirty")),
        installed=values.get("installed", ""),
        python_ok=values.get("python_ok") == "1",
        empty=not values.get("empty"),
        venv_ok=values.get("venv_ok") == "1",
        has_commit=values.get("has_commit") == "commit",
    )


def update_script(
    target: RemoteTarget,
    *,
    path: str,
    create: bool,
    bundle: str | None,
    commit: str,
    branch: str,
    origin_url: str,
    stash: bool,
    backup_branch: str,
) -> str:
    """Create or move the checkout at ``path`` (absolute) to ``commit``.

    ``bundle``: a git bundle on the host holding the commits it lacks.
    ``stash``: first stash local changes (with untracked files); nothing is lost.
    ``backup_branch``: keep the old tip of ``branch`` under this name before moving it.
    """
    q = shlex.quote
    lines = ["set -e", *preamble(target)]
    if create:
        lines += [f"mkdir -p -- {q(path)}", f"cd -- {q(path)}", "git init -q"]
    else:
        lines.append(f"cd -- {q(path)}")
    if stash:
        lines.append("git stash push -q --include-untracked -m 'titanenv remote.bootstrap --force'")
        lines.append("echo \"stashed local changes as $(git rev-parse -q --short stash@{0}) (git stash list)\"")
    if bundle:
        lines.append(f"git fetch -q {sh_path(bundle)} HEAD")
        lines.append(f"rm -f -- {sh_path(bundle)}")
    if backup_branch:
        lines.append(f"git branch -f {q(backup_branch)} {q('refs/heads/' + branch)}")
        lines.append(f"echo {q(f'kept the old tip of {branch} as branch {backup_branch}')}")
    if branch:
        lines.append(f"git checkout -q -B {q(branch)} {q(commit)}")
    else:
        lines.append(f"git checkout -q --detach {q(commit)}")
    if origin_url:
        lines.append("git remote remove origin 2>/dev/null || true")
        lines.append(f"git remote add origin {q(origin_url)}")
    return "\n".join(lines) + "\n"


def upload_script(target: RemoteTarget, path: str) -> str:
    """Store standard input at ``path`` (private to the user), creating its directory."""
    word = sh_path(path)
    return f"umask 077 && mkdir -p -- \"$(dirname -- {word})\" && cat > {word}\n"


def install_script(target: RemoteTarget, *, path: str, stamp: str, make_venv: bool) -> str:
    """Create ``.venv`` (when missing) and ``pip install -e .[extras]`` into it; record ``stamp``."""
    q = shlex.quote
    settings = target.settings
    spec = "." + (f"[{','.join(settings.extras)}]" if settings.extras else "")
    lines = ["set -e", *preamble(target), f"cd -- {q(path)}"]
    if make_venv:
        lines.append("rm -rf .venv")
        lines.append(" ".join([q(settings.python), "-m", "venv", *map(q, settings.venv_options), ".venv"]))
    lines.append(f"rm -f {INSTALL_MARKER}")
    lines.append(" ".join([".venv/bin/python", "-m", "pip", "install", *map(q, settings.pip_options), "-e", q(spec)]))
    # The environment must load the task tree before it counts as installed.
    lines.append(".venv/bin/invoke --list > /dev/null")
    lines.append(f"printf '%s\\n' {q(stamp)} > {INSTALL_MARKER}")
    return "\n".join(lines) + "\n"
