"""Timing: calibrated samples of back-to-back calls, interleaved rounds, medians and paired ratios.

A sample is the time of ``k`` consecutive calls with ``k`` chosen so that a sample takes at least
:data:`SAMPLE_SECONDS`. Contenders run in rounds, in a new seeded random order each round, each
sample right after one untimed call of the same contender. Ratios between contenders are medians
of per-round ratios (:func:`paired`), which the machine's bandwidth drifting between rounds does
not move.
"""

from __future__ import annotations

import math
import random
import statistics
import sys
import time
from typing import Callable, Dict, List, Mapping, Sequence

__all__ = ["IDLE_SECONDS", "NOISY", "SAMPLE_SECONDS", "calibrate", "interleaved", "log", "paired", "summary", "time_k"]

#: minimum duration of one timing sample (seconds)
SAMPLE_SECONDS = 2e-3
#: spread (IQR / median) above which a measurement is flagged as noisy
NOISY = 0.10
#: idle time between steps in the "after idle" crossover measurement (OpenMP workers fall asleep)
IDLE_SECONDS = 5e-3


def log(msg: str) -> None:
    """Progress goes to stderr (tables and JSON to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def time_k(fn: Callable[[], object], k: int) -> float:
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return time.perf_counter() - t0


def calibrate(fn: Callable[[], object], target: float = SAMPLE_SECONDS) -> int:
    """The number of consecutive calls that takes at least ``target`` seconds (fn already warm)."""
    k = 1
    for _ in range(30):
        dt = time_k(fn, k)
        if dt >= target:
            return k
        k = max(k + 1, min(k * 100, int(math.ceil(k * target * 1.2 / max(dt, 1e-9)))))
    return k


def summary(samples: Sequence[float]) -> Dict[str, float]:
    med = statistics.median(samples)
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    else:
        q1 = q3 = med
    return {
        "median_s": med, "min_s": min(samples), "q1_s": q1, "q3_s": q3,
        "spread": (q3 - q1) / med if med > 0 else 0.0,
    }  # fmt: skip


def interleaved(runners: Mapping[str, Callable[[], object]], ks: Mapping[str, int], rounds: int) -> Dict[str, List[float]]:
    """``rounds`` samples (seconds per call) per contender, the contenders in a new (seeded) random
    order each round.

    Each sample is preceded by one untimed call of the same contender, so that every sample starts
    the way back-to-back steps do: its OpenMP team awake and its arrays where its own previous
    step left them. Without it the contender that happens to follow a long single-threaded one
    (NumPy, a torch run) pays for waking a sleeping thread team, and a cyclic order A B C, B C A, ...
    would make that the same contender in every round (measured: 5-30 % on a ResNet-18 step)."""
    names = list(runners)
    order_rng = random.Random(len(names) * 1000 + rounds)  # reproducible orders
    samples: Dict[str, List[float]] = {c: [] for c in names}
    for _ in range(rounds):
        order = names[:]
        order_rng.shuffle(order)
        for c in order:
            runners[c]()
            samples[c].append(time_k(runners[c], ks[c]) / ks[c])
    return samples


def paired(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """The median over rounds of numerator[r] / denominator[r] (both one sample per round)."""
    return statistics.median([a / b for a, b in zip(numerator, denominator) if b > 0])
