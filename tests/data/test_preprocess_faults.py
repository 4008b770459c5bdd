"""data.preprocess against others and the file system: one writer per output, full and read-only disks, Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import (GPT2, OWT, REPO_ROOT, WIKI, corpus_and_reference, pair_bytes, preprocess,
                           preprocess_mib_chunks, succeeded)
from titanenv import locks
from titanenv.data import indexed
from titanenv.data import preprocess as pre


def _invoke_preprocess(corpus: Path, out: Path, *args: str) -> subprocess.Popen[str]:
    """data.preprocess in its own process group, as a terminal runs it (Ctrl-C reaches the whole group)."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "data.preprocess", "--input", str(corpus), "--tokenizer", str(GPT2),
         "--output", str(out), "--chunk-mb", "1", *args],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _stopped_part_way(job: subprocess.Popen[str], out: Path) -> int:
    """Wait for the first finished chunk, then stop the run's processes (SIGSTOP): alive, writing nothing."""
    parts = pre.parts_dir(out)
    deadline = time.monotonic() + 120
    while not list(parts.glob("*.done")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGSTOP)
    done = len(list(parts.glob("*.done")))
    assert done and not indexed.bin_path(out).exists(), "the run must be stopped part way through"
    return done


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_one_writer_per_output_and_an_interrupted_run_resumes(tmp_path: Path, signum: int) -> None:
    corpus, straight = corpus_and_reference(tmp_path)

    out = tmp_path / "out" / "train"
    first = _invoke_preprocess(corpus, out, "--workers", "2")
    try:
        done = _stopped_part_way(first, out)
        # A second run, and an --overwrite that would delete the first one's parts, are refused.
        for extra in ([], ["--overwrite"]):
            second = preprocess_mib_chunks(corpus, out, *extra)
            assert second.returncode == 1
            assert second.stderr.strip().splitlines() == [
                f"error: {out} is being written by host {socket.gethostname()} pid {first.pid} "
                f"(since {locks.read_holder(locks.lock_path(out)).since}, data.preprocess); wait for it, "
                f"choose another --output or stop it (kill {first.pid})"
            ]
            assert len(list(pre.parts_dir(out).glob("*.done"))) == done
        os.killpg(first.pid, signum)  # Ctrl-C reaches every process of the group
    finally:
        os.killpg(first.pid, signal.SIGCONT)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 1
    assert stderr.strip().splitlines() == [
        f"error: interrupted; {pre.parts_dir(out)} keeps the chunks done so far: run the same command again to resume"
    ]
    assert not locks.lock_path(out).exists()
    assert not [p.name for p in pre.parts_dir(out).iterdir() if ".tmp" in p.name]

    resumed = succeeded(preprocess_mib_chunks(corpus, out))
    assert "resuming: " in resumed.stdout and "took over" not in resumed.stdout
    assert pair_bytes(out) == pair_bytes(straight)


def test_a_worker_killed_outright_fails_in_one_line_and_the_rerun_resumes(tmp_path: Path) -> None:
    """The kernel's out-of-memory killer sends SIGKILL to one worker: no clean-up of its own, no answer."""
    corpus, straight = corpus_and_reference(tmp_path)

    out = tmp_path / "out" / "train"
    run = _invoke_preprocess(corpus, out, "--workers", "2")
    try:
        _stopped_part_way(run, out)
        worker = int(Path(f"/proc/{run.pid}/task/{run.pid}/children").read_text().split()[0])
        # What a writer killed mid-chunk leaves: its temporary files.
        stale = pre.parts_dir(out) / f".chunk-000017.bin.tmp-{worker}"
        stale.write_bytes(b"half a chunk")
        os.kill(worker, signal.SIGKILL)
    finally:
        os.killpg(run.pid, signal.SIGCONT)
        _, stderr = run.communicate(timeout=120)
    assert run.returncode == 1
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"error: worker process {worker} was killed by SIGKILL (out of memory?) while tokenizing "
                           f"{corpus} ["), line
    assert line.endswith(f"]; {pre.parts_dir(out)} keeps the chunks done so far: rerun to resume"), line
    assert not locks.lock_path(out).exists()
    assert not [p.name for p in pre.parts_dir(out).iterdir() if ".tmp" in p.name]

    resumed = succeeded(preprocess_mib_chunks(corpus, out))
    assert "resuming: " in resumed.stdout
    assert pair_bytes(out) == pair_bytes(straight)


@pytest.fixture
def mount_tmpfs(tmp_path: Path):
    """Mount a small tmpfs (root only); unmounted afterwards. Skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip() or done.returncode}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _no_temporary_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".train.lock")]


def test_a_full_disk_is_one_line_and_leaves_no_temporary_files(tmp_path: Path, mount_tmpfs) -> None:
    tiny = mount_tmpfs("tiny", "size=5m")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(OWT.read_bytes() * 4)  # about 9 MB of tokens
    out = tiny / "train"

    # Full while tokenizing: chunks in the workers, the copy into the merged file in the parent.
    for workers in ("2", "1"):
        for path in tiny.iterdir():
            subprocess.run(["rm", "-rf", str(path)], check=True)
        result = preprocess("--input", str(corpus), "--tokenizer", str(GPT2), "--chunk-mb", "1",
                            "--workers", workers, output=out)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"error: {pre.parts_dir(out)}: no space left on the device; free space there or choose another "
            "--output (the chunks done so far are kept: rerun to resume)"
        ], result.stderr
        assert _no_temporary_files(tiny) == [] and not locks.lock_path(out).exists()

    # Full before the run starts: nothing of it is left.
    for path in tiny.iterdir():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    with open(tiny / "filler", "wb") as filler:
        try:
            while True:
                filler.write(b"\0" * (64 << 10))
                filler.flush()
        except OSError:
            pass
    result = preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=out)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {tiny}: no space left on the device; free space there or choose another --output"
    ]
    assert sorted(p.name for p in tiny.iterdir()) == ["filler"]


def test_a_read_only_output_directory_is_one_line(tmp_path: Path, mount_tmpfs) -> None:
    if os.geteuid() == 0:
        read_only, problem = mount_tmpfs("ro", "ro,size=1m"), "read-only file system"
    else:
        read_only, problem = tmp_path / "ro", "permission denied"
        read_only.mkdir()
        read_only.chmod(0o555)
    for out in (read_only / "train", read_only / "sub" / "train"):
        result = preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=out)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [f"error: {out.parent}: {problem}; choose another --output"]
    assert list(read_only.iterdir()) == []


def test_a_symlinked_parts_directory_is_refused_and_overwrite_replaces_the_link(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / pre.PLAN_NAME).write_text("{}")
    (elsewhere / "keep.txt").write_text("not data.preprocess's")
    out = tmp_path / "train"
    pre.parts_dir(out).symlink_to(elsewhere)

    refused = preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=out)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"error: {pre.parts_dir(out)} is a symbolic link to {elsewhere}; data.preprocess keeps a run's parts in a "
        "directory of its own beside the output: remove it, or pass --overwrite to replace it (a link's target "
        "is left alone)"
    ]
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), "--overwrite", output=out))
    reference = tmp_path / "reference"
    succeeded(preprocess("--input", str(WIKI), "--tokenizer", str(GPT2), output=reference))
    assert pair_bytes(out) == pair_bytes(reference)
    assert not pre.parts_dir(out).exists()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt", pre.PLAN_NAME]
