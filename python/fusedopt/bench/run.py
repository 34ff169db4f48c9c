"""One configuration, a grid of them, and the threads crossover."""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import _core, _threads
from .arrays import Allocator, make_arrays
from .ceiling import copy_bytes
from .contenders import CONTENDERS, FACTORIES
from .runner import Runner
from .specs import DEFAULT_ALGORITHMS, SPECS, STEP, bytes_per_element
from .timing import IDLE_SECONDS, calibrate, interleaved, log, paired, summary
from .verify import verify

__all__ = ["CROSSOVER_SIZES", "DEFAULT_SIZES", "QUICK_SIZES", "SPEEDUP_BASES", "fastest_torch", "fmt_n", "run",
           "run_config", "threads_crossover"]  # fmt: skip

DEFAULT_SIZES = tuple(1 << e for e in range(10, 25, 2))
QUICK_SIZES = (1 << 12, 1 << 16, 1 << 20)
CROSSOVER_SIZES = tuple(1 << e for e in range(12, 21))
#: contenders that get a "speedup of fusedopt over it" ratio (time of it / time of fusedopt)
SPEEDUP_BASES = ("numpy-inplace", "numpy-textbook", "torch-fused", "torch-foreach", "torch-forloop", "deepspeed",
                 "deepspeed-step")  # fmt: skip


def fmt_n(n: int) -> str:
    e = n.bit_length() - 1
    return f"2^{e}" if n == 1 << e else str(n)


def fastest_torch(samples: Dict[str, List[float]]) -> Optional[str]:
    """The torch contender (``torch-*``) with the smallest median, or None: torch.optim's fastest
    CPU implementation of the algorithm, measured in this run."""
    timed = [c for c in samples if c.startswith("torch-")]
    return min(timed, key=lambda c: summary(samples[c])["median_s"]) if timed else None


def run_config(
    algorithm: str,
    dtype: Any,
    n: int,
    *,
    contenders: Sequence[str] = CONTENDERS,
    rounds: int = 7,
    plain_alloc: bool = False,
) -> Dict[str, Any]:
    """Benchmark one (algorithm, dtype, size): verify every contender, then time them interleaved."""
    spec = SPECS[algorithm]
    dtype = np.dtype(dtype)
    alloc = Allocator(plain_alloc)
    arrays = make_arrays(spec, n, dtype, alloc)
    bpe = bytes_per_element(algorithm, dtype)
    result: Dict[str, Any] = {
        "algorithm": algorithm, "dtype": dtype.name, "n": n, "bytes_per_element": bpe,
        "isa": _core.active_isa(), "contenders": {},
    }  # fmt: skip
    runners: Dict[str, Runner] = {}
    for c in contenders:
        runner = FACTORIES[c](spec, arrays, alloc)
        if runner is None:
            continue
        bad = verify(spec, arrays, runner)
        if bad is not None:
            log(f"  WRONG RESULT: {c} on {algorithm} {dtype.name} n={n}: {bad} -- not timed")
            result["contenders"][c] = {"wrong": bad}
            continue
        runners[c] = runner
    fns = {c: r.step for c, r in runners.items()}
    for fn in fns.values():  # warm up (the verification step already touched everything once)
        fn()
    ks = {c: calibrate(fn) for c, fn in fns.items()}
    samples = interleaved(fns, ks, rounds)
    cbytes = copy_bytes(spec, n, dtype.itemsize)
    for c, s in samples.items():
        info: Dict[str, Any] = dict(summary(s))
        moved = cbytes if c == "copy" else bpe * n
        info.update(
            us_per_step=info["median_s"] * 1e6,
            best_us=info["min_s"] * 1e6,
            gbps=moved / info["median_s"] / 1e9 if info["median_s"] > 0 else math.inf,
            k=ks[c],
            samples=len(s),
        )
        if runners[c].note:
            info["note"] = runners[c].note
        result["contenders"][c] = info
    # Ratios are medians of per-round ratios: each round times every contender once, within tens
    # of milliseconds, so a round's ratio is not moved by the machine's bandwidth drifting between
    # rounds (at DRAM sizes this VM's bandwidth wanders by up to 2x over a minute).
    for c in samples:
        if c != "copy" and "copy" in samples:
            result["contenders"][c]["pct_copy"] = 100.0 * paired(samples["copy"], samples[c]) * bpe * n / cbytes
        if c not in ("copy", "ceiling") and "ceiling" in samples:
            result["contenders"][c]["pct_ceiling"] = 100.0 * paired(samples["ceiling"], samples[c])
    for base in SPEEDUP_BASES:
        if "fusedopt" in samples and base in samples:
            result[f"speedup_vs_{base}"] = paired(samples[base], samples["fusedopt"])
    best = fastest_torch(samples)
    if best is not None and "fusedopt" in samples:
        result["torch_best"] = best
        result["speedup_vs_torch"] = result[f"speedup_vs_{best}"]
    return result


def run(
    algorithms: Sequence[str],
    dtypes: Sequence[Any],
    sizes: Sequence[int],
    *,
    contenders: Sequence[str] = CONTENDERS,
    rounds: int = 7,
    plain_alloc: bool = False,
) -> List[Dict[str, Any]]:
    """run_config over the grid (algorithm-major), with progress on stderr."""
    results = []
    total = len(algorithms) * len(dtypes) * len(sizes)
    i = 0
    for alg in algorithms:
        for dt in dtypes:
            for n in sizes:
                i += 1
                log(f"[{i}/{total}] {alg} {np.dtype(dt).name} n={fmt_n(n)} ...")
                t0 = time.perf_counter()
                res = run_config(alg, dt, n, contenders=contenders, rounds=rounds, plain_alloc=plain_alloc)
                log(f"    done in {time.perf_counter() - t0:.1f} s")
                results.append(res)
    return results


def _bind(fn: Callable[..., object], arrays: List[np.ndarray], kw: Dict[str, Any]) -> Callable[[], None]:
    def call() -> None:
        fn(*arrays, **kw)

    return call


def threads_crossover(
    algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
    sizes: Sequence[int] = CROSSOVER_SIZES,
    *,
    threads: int = 2,
    rounds: int = 7,
    idle_samples: int = 21,
    dtype: Any = np.float32,
) -> Dict[str, Any]:
    """threads=1 against threads=``threads`` (explicit), back to back and after ~5 ms idle.

    "after idle": sleep IDLE_SECONDS before each step (OpenMP workers go to sleep), time only the
    step. Returns per-size medians and, per algorithm, the smallest size from which the
    multi-threaded step wins by more than 10 % after idle at that and every larger measured size.
    """
    out: Dict[str, Any] = {"threads": threads, "dtype": np.dtype(dtype).name, "idle_s": IDLE_SECONDS, "algorithms": {}}
    for alg in algorithms:
        spec = SPECS[alg]
        fn = spec.functional
        rows = []
        for n in sizes:
            log(f"crossover {alg} n={fmt_n(n)} ...")
            arrays = make_arrays(spec, n, dtype, Allocator())
            kw1 = dict(spec.kwargs(STEP), threads=1)
            kwt = dict(spec.kwargs(STEP), threads=threads)
            fns = {"1": _bind(fn, arrays, kw1), "t": _bind(fn, arrays, kwt)}
            for name, f in fns.items():
                bad = verify(spec, arrays, Runner(f, "exact"))
                if bad:
                    raise RuntimeError(f"fusedopt {alg} threads={kw1 if name == '1' else kwt}: {bad}")
            for f in fns.values():
                f()
            ks = {c: calibrate(f) for c, f in fns.items()}
            b2b = {c: summary(s) for c, s in interleaved(fns, ks, rounds).items()}
            idle: Dict[str, List[float]] = {"1": [], "t": []}
            for r in range(idle_samples):
                for c in ("1", "t") if r % 2 == 0 else ("t", "1"):
                    time.sleep(IDLE_SECONDS)
                    t0 = time.perf_counter()
                    fns[c]()
                    idle[c].append(time.perf_counter() - t0)
            row: Dict[str, Any] = {"n": n}
            for mode, summ in (("b2b", b2b), ("idle", {c: summary(s) for c, s in idle.items()})):
                for c in ("1", "t"):
                    row[f"{mode}_{c}_us"] = summ[c]["median_s"] * 1e6
                    row[f"{mode}_{c}_min_us"] = summ[c]["min_s"] * 1e6
                    row[f"{mode}_{c}_spread"] = summ[c]["spread"]
                row[f"{mode}_speedup"] = row[f"{mode}_1_us"] / row[f"{mode}_t_us"]
                row[f"{mode}_min_speedup"] = row[f"{mode}_1_min_us"] / row[f"{mode}_t_min_us"]
            rows.append(row)
        out["algorithms"][alg] = {
            "rows": rows,
            "first_idle_win": _first_win(rows, "idle_speedup"),
            "stable_idle_win": _stable_win(rows, "idle_speedup"),
            "stable_idle_win_min": _stable_win(rows, "idle_min_speedup"),
            "first_b2b_win": _first_win(rows, "b2b_speedup"),
            "current_serial_below": _threads.SERIAL_BELOW.get(alg),
        }
    return out


def _first_win(rows: List[Dict[str, Any]], key: str, margin: float = 1.10) -> Optional[int]:
    return next((r["n"] for r in rows if r[key] > margin), None)


def _stable_win(rows: List[Dict[str, Any]], key: str, margin: float = 1.10) -> Optional[int]:
    """The smallest size from which ``key`` exceeds ``margin`` at that and every larger size."""
    for i in range(len(rows)):
        if all(r[key] > margin for r in rows[i:]):
            return int(rows[i]["n"])
    return None
