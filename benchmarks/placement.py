"""Does the relative placement of a step's buffers matter on this machine? (4K / cache-set aliasing)

PERFORMANCE.md §2 measured the 4-stream Adam pattern at 6.7 GB/s instead of 40 GB/s on a Zen 3 when
the four arrays sat exactly a power of two apart. This script times the same traffic pattern (3
read-modify-write streams + 1 read stream, float32, via the native probe ``_core._traffic_probe``)
for several layouts cut from one buffer, and for separately allocated arrays, so the arena's
choice (``fusedopt.arena.STAGGER_BYTES``) can be checked on any machine.

    python benchmarks/placement.py [--log2n 24] [--reps 9]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fusedopt import _core
from fusedopt.arena import PERIOD_BYTES, STAGGER_BYTES


def gbps(bufs: list, threads: int, reps: int) -> float:
    n = bufs[0].size
    written, read = [[b] for b in bufs[:3]], [bufs[3]]
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        _core._traffic_probe(written, read, 0.0, threads)
        best = min(best, time.perf_counter() - t)
    return 28 * n / best / 1e9  # 3 streams read and written + 1 stream read, 4 bytes each


def cut(n: int, offsets: list) -> list:
    total = max(offsets) + 4 * n + 4096
    raw = np.zeros(total // 4 + 2048, np.float32)
    shift = (-raw.__array_interface__["data"][0]) % 4096 // 4  # page-align the first buffer
    return [raw[shift + o // 4 : shift + o // 4 + n] for o in offsets]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2n", type=int, default=24)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    n = 1 << args.log2n
    size = 4 * n
    layouts = {
        "power of two apart": [k * size for k in range(4)],
        "+64 B each": [k * (size + 64) for k in range(4)],
        "+4 KiB+64 B each": [k * (size + 4096 + 64) for k in range(4)],
        f"arena stagger (+{STAGGER_BYTES} B mod {PERIOD_BYTES})": [k * size + k * STAGGER_BYTES for k in range(4)],
        "+64 KiB+320 B each": [k * (size + 65536 + 320) for k in range(4)],
    }
    print(f"float32, n = 2^{args.log2n}, 3 RMW + 1 read streams (28 B/element), best of {args.reps}; GB/s")
    for threads in (1, 2):
        for name, offsets in layouts.items():
            print(f"threads={threads}  {name:36s} {gbps(cut(n, offsets), threads, args.reps):6.1f}")
        sep = [np.zeros(n, np.float32) for _ in range(4)]
        print(f"threads={threads}  {'separate np.zeros arrays':36s} {gbps(sep, threads, args.reps):6.1f}")


if __name__ == "__main__":
    main()
