"""Shared by the benchmarks (`python -m tests.bench_ws`, `tests.bench_sse`, `tests.bench_mask`).

Not collected by unittest (the names do not start with `test`).  Standard library only, Linux
(/proc) for the server's memory, CPU and thread counts.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import sys
import threading
from pathlib import Path

from tests.support import split_head, start_process, stop_process

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


class Server:
    """One of our servers as a subprocess on 127.0.0.1 and a free port; its log is drained."""

    def __init__(self, script: str, *args: str, timeout: float = 10.0) -> None:
        self.process, self.port = start_process(script, *args, timeout=timeout)
        # Keep reading its log (a line per connection) so that the server never blocks on it.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for _ in self.process.stderr:
            pass

    @property
    def pid(self) -> int:
        return self.process.pid

    def status(self, field: str) -> int:
        """A number from /proc/PID/status, e.g. VmRSS (KiB) or Threads."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def cpu_seconds(self) -> float:
        """User + system CPU of the whole process (every thread, the ended ones too)."""
        return process_cpu_seconds(self.pid)

    def stop(self) -> None:
        stop_process(self.process)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class RawHTTPClient(asyncio.Protocol):
    """Sends `request()` on connect; `open` resolves at a response head with `status`; then
    every body byte goes to `on_body`."""

    status = b"HTTP/1.1 200"

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""
        self.open = asyncio.get_running_loop().create_future()

    def request(self) -> bytes:
        raise NotImplementedError

    def on_body(self, data: bytes) -> None:
        raise NotImplementedError

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request())

    def data_received(self, data: bytes) -> None:
        if not self.open.done():
            self.head += data
            head = split_head(self.head)
            if head is None:
                return
            if not self.head.startswith(self.status):
                self.open.set_exception(RuntimeError(self.head[:80]))
                return
            data, self.head = head[2], b""
            self.open.set_result(True)
            if not data:
                return
        self.on_body(data)

    def connection_lost(self, exc) -> None:
        if not self.open.done():
            self.open.set_exception(ConnectionError("closed before the response head"))


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft limit of open files (the servers started later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(needed, soft), hard), hard))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(title: str, rows: list[dict]) -> None:
    """A markdown table of dicts (same keys), numbers rounded for reading."""
    print(f"\n### {title}\n")
    if not rows:
        print("(no rows)")
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("| " + " | ".join("---" for _ in keys) + " |")
    for row in rows:
        print("| " + " | ".join(_format(row[k]) for k in keys) + " |")
    sys.stdout.flush()


def _format(value) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}"
