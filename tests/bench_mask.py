"""Benchmark: WebSocket masking (RFC 6455 §5.3) in pure Python, MB/s by payload size.

    python -m tests.bench_mask [--sizes 64,1024,65536,1048576,16777216] [--seconds 0.5]

Times `ws_server.apply_mask` (what the server runs: the definition as one integer XOR, and
`mask_lanes` from `MASK_LANES_FROM` bytes up) and each technique alone, in process, on one core;
every result is checked against the definition.
"""

from __future__ import annotations

import argparse
import os
import time

import ws_server
from tests.benchtools import machine, print_table


def per_byte(data: bytes, key: bytes) -> bytes:
    """The definition, a Python loop: the teaching version."""
    return bytes(b ^ key[i & 3] for i, b in enumerate(data))


def int_xor(data: bytes, key: bytes) -> bytes:
    """The whole buffer as one integer, XORed with the key repeated."""
    n = len(data)
    repeated = int.from_bytes((key * ((n >> 2) + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ repeated).to_bytes(n, "little")


CANDIDATES = {
    "per byte (definition)": per_byte,
    "int XOR, one integer (apply_mask below 2 KiB)": int_xor,
    "bytes.translate, 4 lanes": ws_server.mask_lanes,
    "apply_mask (chosen by size)": ws_server.apply_mask,
}


def throughput(function, data: bytes, key: bytes, seconds: float) -> float:
    """MB/s (10^6 bytes) over repeated calls for about `seconds`."""
    calls, started = 0, time.perf_counter()
    while True:
        function(data, key)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return calls * len(data) / elapsed / 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,1024,16384,65536,1048576,16777216")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per candidate and size")
    args = parser.parse_args(argv)
    key = os.urandom(4)
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        data = os.urandom(size)
        expected = int_xor(data, key)
        row = {"size": size}
        for name, function in CANDIDATES.items():
            if name.startswith("per byte") and size > 1 << 20:
                row[name + " MB/s"] = float("nan")  # minutes; its speed is known (a few MB/s)
                continue
            assert bytes(function(data, key)) == expected, name
            row[name + " MB/s"] = throughput(function, data, key, args.seconds)
        rows.append(row)
    print_table(f"masking, MB/s ({machine()})", rows)


if __name__ == "__main__":
    main()
