"""The CLI as a real process that starts in a fraction of a second.

`python -m bioindex.cli` spends about six seconds importing torch, torchvision and open_clip
before it reads its first argument, and the tests that kill, interrupt or race CLI runs
started dozens: most of their time was start-up. Here each run is forked from a forkserver
that imported those modules once (multiprocessing's own preloading): still a process of its
own, with its own pid, killed by a real SIGKILL, writing to its own file descriptors 1 and 2.
The tests of start-up itself (help speed, cold paths, import side effects) and the Ray driver
still start fresh interpreters.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_PRELOAD = ["bioindex.cli", "bioindex.collection", "bioindex.models", "open_clip"]


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def _run(args: list[str], env: dict[str, str], out: str, err: str) -> None:
    # The child was told to start processes as its forkserver parent does; a fresh
    # interpreter starts them the platform's way (fork here), and decode workers forked from
    # the CLI notice when a kill takes it.
    multiprocessing.set_start_method(None, force=True)
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    from bioindex import cli

    sys.argv = [cli.__file__, *args]  # what the store's writer lock records
    try:
        cli.main(args, prog_name="bioindex")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class CliProcess:
    """`python -m bioindex.cli ARGS` with subprocess.Popen's calls: pid, poll, wait,
    send_signal; its stdout and stderr are read once it has ended. `env` holds variables
    added to the test's own environment (not, as subprocess's, the whole of it)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="cli-")
        self._out = Path(self._folder.name) / "stdout"
        self._err = Path(self._folder.name) / "stderr"
        self._process = _context().Process(
            target=_run, args=([str(a) for a in args], env or {}, str(self._out), str(self._err)))
        self._process.start()
        self.pid = self._process.pid
        self.args = args

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def result(self, timeout: float | None = 300) -> subprocess.CompletedProcess:
        """Waits, then its outputs as subprocess.run(capture_output=True, text=True) has them."""
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        out, err = (p.read_text() if p.exists() else "" for p in (self._out, self._err))
        done = subprocess.CompletedProcess(self.args, code, out, err)
        self._folder.cleanup()
        return done


def run_cli(args: list[str], env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    return CliProcess(args, env).result(timeout)
