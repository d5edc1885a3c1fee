"""Worker processes of the systems under test, and the memory they hold.

Every system's workers run as real processes started the way their
documentation starts them (``touchline worker``, ``celery worker``,
``procrastinate worker``). :class:`RssSampler` sums the resident set size of
those processes and all their children a few times a second and keeps the
peak, which is the figure reported: what the machine must have for them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
# How often worker memory is sampled: often enough to catch a peak that lasts a second.
SAMPLE_EVERY = 0.25
# A worker that has not stopped this long after SIGTERM is killed.
STOP_TIMEOUT = 30.0


@dataclass
class Workers:
    """Started worker processes; their logs go to files in the scratch folder."""

    processes: list[subprocess.Popen[bytes]]
    logs: list[Path]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def check_alive(self) -> None:
        """Raise with the log's tail if a worker has exited on its own."""
        for process, path in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"worker {process.args!r} exited {process.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM every worker (and its children), wait, then SIGKILL stragglers."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _kill_tree(process.pid)
                process.wait()


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        family = [*parent.children(recursive=True), parent]
    except psutil.NoSuchProcess:
        return
    for member in family:
        with suppress(psutil.NoSuchProcess):
            member.kill()


@contextmanager
def start_workers(
    commands: Sequence[Sequence[str]], *, env: dict[str, str], folder: Path, label: str
) -> Iterator[Workers]:
    """Start one process per command with ``env`` added; stop them all on exit."""
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    try:
        for i, command in enumerate(commands):
            path = folder / f"{label}-{i}.log"
            with path.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        list(command),
                        cwd=ROOT,
                        env={**os.environ, **env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            logs.append(path)
        yield Workers(processes, logs)
    finally:
        Workers(processes, logs).stop()


def tree_rss(pids: Sequence[int]) -> int:
    """Resident bytes of these processes and all their descendants, now."""
    total = 0
    for pid in pids:
        try:
            parent = psutil.Process(pid)
            family = [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for member in family:
            with suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
    return total


@dataclass
class RssSampler:
    """Samples :func:`tree_rss` in a thread between ``start()`` and ``stop()``."""

    pids: Sequence[int]
    peak: int = 0
    last: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_EVERY)

    def sample(self) -> int:
        self.last = tree_rss(self.pids)
        self.peak = max(self.peak, self.last)
        self.samples += 1
        return self.last

    def stop(self) -> int:
        """Stop sampling; the peak in bytes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        return self.peak


def percentile(values: Sequence[float], share: float) -> float:
    """The ``share`` quantile (0..1) by the nearest-rank method; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(int(-(-share * len(ordered) // 1)), 1)  # ceil(share * n), at least 1
    return ordered[min(rank, len(ordered)) - 1]
