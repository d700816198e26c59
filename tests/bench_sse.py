"""Benchmark: sse_server.py under load from a standard-library load generator, on loopback.

    python -m tests.bench_sse                  # every mode, about a minute
    python -m tests.bench_sse --modes fanout --clients 1000 --rate 5

Modes (each starts a fresh `sse_server.py` subprocess on 127.0.0.1, clock and heartbeat on):
  fanout  K subscribers; the generator POSTs M events to /publish on one keep-alive connection,
          each carrying its send time -> deliveries/s, latency p50/p99 (back to back, or paced
          with --rate)
  idle    N subscribers that only listen -> server RSS per subscriber; then they leave, and the
          server's thread count must come back to its baseline
  shared  the fanout, 1000 subscribers x 40 events back to back, then x 15 events at 5/s,
          three ways: one process alone; one process with --redis; the subscribers spread over
          two processes on one Redis (the events published to the first).  Needs redis-server
          (started here, on a free port); not in the default run.  CPU per delivery counts
          every server process; Redis's own CPU is given apart.

Why the generator is faster than the server: subscribers are asyncio protocols that find the
events in each read with `bytes.count` and read one timestamp per read (the oldest event in it,
so latency is not flattered); the publisher's requests are built before the clock starts.  The
table gives both processes' CPU seconds: the generator's must stay below the server's.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tests.benchtools import RawHTTPClient, Server, machine, print_table, process_cpu_seconds, raise_fd_limit

MARK = b'data: {"t":'  # the start of every published event's data line


class Subscriber(RawHTTPClient):
    """GET /sse; counts published events (they contain MARK), samples one latency per read."""

    def __init__(self, expected: int, finished: list) -> None:
        super().__init__()
        self.expected, self.finished = expected, finished
        self.count = 0
        self.tail = b""  # the end of the previous read, in case MARK is split across reads
        self.samples: list[tuple[float, int]] = []

    def request(self) -> bytes:
        return b"GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"

    def on_body(self, data: bytes) -> None:
        now = time.time_ns() // 1000
        buffer = self.tail + data
        found = buffer.count(MARK)
        if found:
            first = buffer.find(MARK) + len(MARK)
            end = buffer.find(b",", first)
            if end > 0:
                self.samples.append(((now - int(buffer[first:end])) / 1e6, found))
            before, self.count = self.count, self.count + found
            if before < self.expected <= self.count:
                self.finished.append(time.perf_counter())
        self.tail = buffer[-(len(MARK) - 1):]


async def subscribe(port: int, count: int, expected: int, finished: list, concurrency: int = 200) -> list:
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(concurrency)

    async def one():
        async with limit:
            _, subscriber = await loop.create_connection(lambda: Subscriber(expected, finished), "127.0.0.1", port)
            await asyncio.wait_for(subscriber.open, 30)
            return subscriber
    return await asyncio.gather(*(one() for _ in range(count)))


async def fanout(server: Server | list[Server], clients: int, messages: int, rate: float,
                 redis_pid: int | None = None) -> dict:
    """Subscribers spread over the servers given (round robin); events published to the first."""
    servers = server if isinstance(server, list) else [server]
    finished: list[float] = []
    subscribers = []
    for index, each in enumerate(servers):
        share = clients // len(servers) + (index < clients % len(servers))
        subscribers += await subscribe(each.port, share, messages, finished)
    await asyncio.sleep(1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", servers[0].port)
    cpu_redis = process_cpu_seconds(redis_pid) if redis_pid else 0.0
    cpu_server, cpu_client, started = sum(s.cpu_seconds() for s in servers), time.process_time(), time.perf_counter()
    for seq in range(messages):
        if rate:
            await asyncio.sleep(max(0.0, started + seq / rate - time.perf_counter()))
        body = b'{"t":%d,"seq":%d}' % (time.time_ns() // 1000, seq)
        writer.write(b"POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 204"), head
    deadline = time.perf_counter() + 120
    while len(finished) < clients and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    elapsed = max(finished) - started if len(finished) == clients else float("nan")
    cpu = sum(s.cpu_seconds() for s in servers) - cpu_server, time.process_time() - cpu_client
    cpu_redis = process_cpu_seconds(redis_pid) - cpu_redis if redis_pid else float("nan")
    writer.close()
    samples = sorted(s for subscriber in subscribers for s in subscriber.samples)
    for subscriber in subscribers:
        subscriber.transport.close()
    pace = f"{rate:g}/s" if rate else "back to back"
    row = {"mode": f"fanout, {clients} subscribers x {messages} events, {pace}",
           "deliveries/s": clients * messages / elapsed,
           "p50 ms": weighted(samples, 0.5) * 1e3, "p99 ms": weighted(samples, 0.99) * 1e3,
           "server CPU s": cpu[0], "generator CPU s": cpu[1]}
    if redis_pid is not None:
        row["µs server CPU / delivery"] = cpu[0] / (clients * messages) * 1e6
        row["Redis CPU s"] = cpu_redis
    return row


def shared(clients: int = 1000, messages: int = 40, rate: float = 0, repeat: int = 3) -> list[dict]:
    """The same fanout from one process, one process on Redis, and two processes on Redis."""
    from tests.support import RedisServer, find_redis_server  # (only this mode needs Redis)
    binary = find_redis_server()
    if binary is None:
        raise SystemExit("the shared mode needs redis-server (Debian: apt-get install redis-server)")
    redis = RedisServer(binary)
    rows = []
    try:
        for label, processes, use_redis in (("1 process", 1, False), ("1 process, --redis", 1, True),
                                            ("2 processes, --redis", 2, True)):
            runs = []
            for _ in range(repeat):
                redis.command("FLUSHALL")
                extra = ("--redis", redis.url) if use_redis else ()
                servers = [Server("sse_server.py", "--max-clients", "100000", *extra) for _ in range(processes)]
                try:
                    runs.append(asyncio.run(fanout(servers, clients, messages, rate, redis.process.pid)))
                finally:
                    for server in servers:
                        server.stop()
            middle = sorted(runs, key=lambda row: row["deliveries/s"])[len(runs) // 2]  # the median run
            rows.append({"setup": label, "events": f"{messages}, " + (f"{rate:g}/s" if rate else "back to back"),
                         "deliveries/s": middle["deliveries/s"],
                         "µs server CPU / delivery": middle["µs server CPU / delivery"],
                         "Redis CPU s": middle["Redis CPU s"] if use_redis else float("nan"),
                         "p50 ms": middle["p50 ms"], "p99 ms": middle["p99 ms"],
                         "deliveries/s of each run": " / ".join(f"{row['deliveries/s']:,.0f}" for row in runs)})
    finally:
        redis.close()
    return rows


def weighted(samples: list[tuple[float, int]], fraction: float) -> float:
    total, seen = sum(n for _, n in samples), 0
    for latency, n in samples:
        seen += n
        if seen >= fraction * total:
            return latency
    return float("nan")


async def idle(server: Server, clients: int) -> dict:
    warm = await subscribe(server.port, 1, 0, [])
    warm[0].transport.close()
    await asyncio.sleep(1.5)
    threads, before = server.status("Threads"), server.status("VmRSS")
    held = await subscribe(server.port, clients, 0, [])
    await asyncio.sleep(1.5)
    loaded, threads_loaded = server.status("VmRSS"), server.status("Threads")
    for subscriber in held:
        subscriber.transport.close()
    left = time.perf_counter()
    while server.status("Threads") > threads and time.perf_counter() - left < 30:
        await asyncio.sleep(0.05)
    return {"mode": f"idle, {clients} subscribers", "KiB RSS per subscriber": (loaded - before) / clients,
            "threads before / held / after": f"{threads} / {threads_loaded} / {server.status('Threads')}",
            "s back to baseline": time.perf_counter() - left}


def with_server(measure, *server_args: str) -> dict:
    server = Server("sse_server.py", "--max-clients", "100000", *server_args)
    try:
        return asyncio.run(measure(server))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="fanout,idle")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[100, 1000])
    parser.add_argument("--messages", type=lambda s: [int(x) for x in s.split(",")], default=[200, 40],
                        help="events per client count (default 200,40)")
    parser.add_argument("--rate", type=float, default=0, help="events/s; 0 = back to back (default)")
    parser.add_argument("--paced", action="store_true", help="also run 1000 subscribers at 5 events/s")
    parser.add_argument("--idle-clients", type=lambda s: [int(x) for x in s.split(",")], default=[1000])
    args = parser.parse_args(argv)
    raise_fd_limit(max(args.clients + args.idle_clients) * 2 + 1000)
    modes = args.modes.split(",")
    fanout_rows, idle_rows = [], []
    if "fanout" in modes:
        for clients, messages in zip(args.clients, args.messages):
            fanout_rows.append(with_server(lambda s: fanout(s, clients, messages, args.rate)))
        if args.paced:
            fanout_rows.append(with_server(lambda s: fanout(s, 1000, 15, 5.0)))
    if "idle" in modes:
        for clients in args.idle_clients:
            idle_rows.append(with_server(lambda s: idle(s, clients)))
    if fanout_rows:
        print_table(f"sse_server.py fanout ({machine()})", fanout_rows)
    if idle_rows:
        print_table("sse_server.py idle subscribers", idle_rows)
    if "shared" in modes:
        print_table(f"sse_server.py fanout through Redis, median of 3 ({machine()})",
                    shared() + shared(messages=15, rate=5.0))


if __name__ == "__main__":
    main()
