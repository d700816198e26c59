"""Benchmark: what permessage-deflate gains and costs per message, by size, kind and level.

    python -m tests.bench_deflate

Each message is compressed on its own, as `ws_server.MessageDeflater` does (no context
takeover, so a broadcast is compressed once for every client).  Two kinds of text, made from a
fixed seed: chat lines (words of a small vocabulary) and a JSON feed (lists of quote-like
objects).  The table gives the compressed size over the original (below 1.00 is a gain) and
the CPU time of one compression.  What it shows chose the defaults: --compression-level 1 is
within a few hundredths of level 6's ratio at a fraction of its time on larger messages, and
under --compression-threshold (128 bytes) there is little or nothing to gain.
"""

from __future__ import annotations

import json
import random
import time

import ws_server
from tests.benchtools import machine, print_table

WORDS = ("the a chat message hello world server client page send receive room websocket python "
         "event stream time").split()
SIZES = (16, 32, 64, 128, 256, 512, 1024, 4096)
LEVELS = (1, 6, 9)
REPEAT = 2000


def chat_text(rng: random.Random, size: int) -> bytes:
    words: list[str] = []
    while len(" ".join(words)) < size:
        words.append(rng.choice(WORDS))
    return " ".join(words)[:size].encode()


def json_feed(rng: random.Random, size: int) -> bytes:
    items: list[dict] = []
    while len(json.dumps(items)) < size:
        items.append({"id": rng.randrange(10**9), "symbol": rng.choice(["EURUSD", "GBPUSD", "USDJPY"]),
                      "bid": round(rng.random() * 2, 5), "ask": round(rng.random() * 2, 5),
                      "tags": rng.sample(WORDS, 4)})
    return json.dumps(items).encode()[:size]


def measure(payload: bytes, level: int) -> tuple[float, float]:
    """(compressed size / size, µs per compression), over REPEAT compressions."""
    deflater = ws_server.MessageDeflater(15, level)
    started = time.process_time()
    total = sum(len(deflater.compress(payload)) for _ in range(REPEAT))
    return total / REPEAT / len(payload), (time.process_time() - started) / REPEAT * 1e6


def main() -> None:
    rng = random.Random(7692)
    rows = []
    for kind, make in (("chat", chat_text), ("JSON feed", json_feed)):
        for size in SIZES:
            payload = make(rng, size)
            row: dict = {"kind": kind, "bytes": size}
            for level in LEVELS:
                ratio, us = measure(payload, level)
                row[f"level {level}: out/in"] = ratio
                row[f"level {level}: µs"] = us
            rows.append(row)
    print_table(f"permessage-deflate, one message at a time ({machine()})", rows)


if __name__ == "__main__":
    main()
