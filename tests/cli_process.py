"""The CLI as a real process that starts in a fraction of a second.

`python -m bioindex.cli` spends about six seconds importing torch, torchvision and open_clip
before it reads its first argument, and the tests that kill, interrupt or race CLI runs
started dozens: most of their time was start-up. Here each run is forked from a forkserver
that imported those modules once (multiprocessing's own preloading): still a process of its
own, with its own pid, killed by a real SIGKILL, writing to its own file descriptors 1 and 2
(or to a terminal's or pipe's the test hands it). The tests of start-up itself (help speed,
cold paths, import side effects) and of `bioindex demo` offline in a bare environment still
start fresh interpreters.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from multiprocessing import reduction
from pathlib import Path

_PRELOAD = ["bioindex.cli", "bioindex.collection", "bioindex.models", "open_clip"]


def _context() -> multiprocessing.context.ForkServerContext:
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


class _PassedFd:
    """A file descriptor of this process, handed to the forkserver's child as its own."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple:
        return _received_fd, (reduction.DupFd(self.fd),)


def _received_fd(duplicate: object) -> int:
    return duplicate.detach()


def _run(args: list[str], env: dict[str, str], out: str, err: str | int,
         new_session: bool) -> None:  # fmt: skip
    # The child was told to start processes as its forkserver parent does; a fresh
    # interpreter starts them the platform's way (fork here), and decode workers forked from
    # the CLI notice when a kill takes it.
    multiprocessing.set_start_method(None, force=True)
    # Python turns Ctrl-C into KeyboardInterrupt in a CLI started from a shell, also where
    # the suite was started with SIGINT ignored (nohup, `&`), which the forkserver inherits.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.update(env)
    if new_session:
        os.setsid()
    for fd, target in ((1, out), (2, err)):
        opened = (target if isinstance(target, int)
                  else os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))  # fmt: skip
        os.dup2(opened, fd)
        os.close(opened)
    faulthandler.enable()  # a crash says where, on the run's own stderr
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
    added to the test's own environment (not, as subprocess's, the whole of it); `stderr`,
    a file descriptor such as a terminal's to write stderr to instead (then not read back);
    `new_session`, a session (and process group) of its own, for os.killpg."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None,
                 stderr: int | None = None, new_session: bool = False) -> None:  # fmt: skip
        self._folder = tempfile.TemporaryDirectory(prefix="cli-")
        self._out = Path(self._folder.name) / "stdout"
        self._err = Path(self._folder.name) / "stderr"
        self._read_err = stderr is None
        self._process = _context().Process(target=_run, args=(
            [str(a) for a in args], env or {}, str(self._out),
            str(self._err) if stderr is None else _PassedFd(stderr), new_session))  # fmt: skip
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

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def result(self, timeout: float | None = 300) -> subprocess.CompletedProcess:
        """Waits, then its outputs as subprocess.run(capture_output=True, text=True) has them."""
        try:
            code = self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        out = self._out.read_text() if self._out.exists() else ""
        err = self._err.read_text() if self._read_err and self._err.exists() else ""
        done = subprocess.CompletedProcess(self.args, code, out, err)
        self._folder.cleanup()
        return done


def run_cli(args: list[str], env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:  # fmt: skip
    return CliProcess(args, env).result(timeout)
