"""Concurrency: Python threads stepping optimizers at the same time.

* Many threads, each with its own optimizer (every algorithm and flag set, arrays large enough
  that every call runs an OpenMP team while the other threads run theirs): bitwise the same
  results as running the same optimizers one after the other.
* Two threads stepping the *same* optimizer: ``Optimizer.step`` serializes on a lock, so the
  result is that of *some* serial order of the individual steps: with identical gradients the
  result equals a serial run of all the steps; with different gradients it equals one of the
  possible interleavings (all of them are computed). The step counts add up. Never a crash.

(That the GIL is released during a step, and determinism across thread counts, are tested in
tests/test_threads.py.)
"""

from __future__ import annotations

import itertools
import threading
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import functional as F

# (name, factory) for every optimizer and the flags that change which state it keeps
CONFIGS: List[Tuple[str, Callable[[List[np.ndarray]], Any]]] = [
    ("SGD", lambda p: fusedopt.SGD(p, lr=0.05)),
    ("SGD-momentum-nesterov", lambda p: fusedopt.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    ("SGD-momentum-dampening", lambda p: fusedopt.SGD(p, lr=0.05, momentum=0.8, dampening=0.1, maximize=True)),
    ("Momentum-bias_correction", lambda p: fusedopt.Momentum(p, lr=0.05, beta=0.8, bias_correction=True)),
    ("RMSprop-centered-momentum", lambda p: fusedopt.RMSprop(p, lr=1e-3, momentum=0.5, centered=True, weight_decay=1e-2)),
    ("Adam-amsgrad", lambda p: fusedopt.Adam(p, lr=1e-3, amsgrad=True, weight_decay=1e-2)),
    ("AdamW", lambda p: fusedopt.AdamW(p, lr=1e-3, betas=(0.8, 0.99))),
    ("Adagrad", lambda p: fusedopt.Adagrad(p, lr=1e-2, lr_decay=1e-3, initial_accumulator_value=0.1)),
]  # fmt: skip


def _problem(
    seed: int, dtype: Any, sizes: Tuple[int, ...], steps: int
) -> Tuple[List[np.ndarray], List[List[np.ndarray]]]:
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n).astype(dtype) for n in sizes]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(steps)]
    return params, grads


def _run_threads(workers: List[Callable[[], None]]) -> None:
    """Start all workers behind a barrier; re-raise the first exception of any of them."""
    barrier = threading.Barrier(len(workers))
    errors: List[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(timeout=60)
                fn()
            except BaseException as exc:  # reported below
                errors.append(exc)

        return run

    threads = [threading.Thread(target=wrap(w)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a worker thread hangs"
    if errors:
        raise errors[0]


def _state_bytes(opt: Any) -> List[Dict[str, Any]]:
    return [{k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in s.items()} for s in opt.state]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_own_optimizer_per_thread_equals_serial(dtype: Any) -> None:
    # 2 tensors, ~100k elements per call: above every SERIAL_BELOW, so each call runs an OpenMP
    # team of get_num_threads() threads while the other Python threads run theirs.
    sizes = (70_001, 40_003)
    steps = 6
    problems = [_problem(100 + k, dtype, sizes, steps) for k in range(len(CONFIGS))]

    def make(k: int) -> Tuple[Any, List[np.ndarray]]:
        params = [p.copy() for p in problems[k][0]]
        return CONFIGS[k][1](params), params

    serial = []
    for k in range(len(CONFIGS)):
        opt, params = make(k)
        for g in problems[k][1]:
            opt.step(g)
        serial.append((params, _state_bytes(opt)))

    concurrent = [make(k) for k in range(len(CONFIGS))]

    def worker(k: int) -> Callable[[], None]:
        def run() -> None:
            opt, _ = concurrent[k]
            for g in problems[k][1]:
                opt.step(g)

        return run

    _run_threads([worker(k) for k in range(len(CONFIGS))])
    for k, (name, _) in enumerate(CONFIGS):
        opt, params = concurrent[k]
        for i, (a, b) in enumerate(zip(params, serial[k][0])):
            assert a.tobytes() == b.tobytes(), f"{name}: params[{i}] differs from the serial run"
        assert _state_bytes(opt) == serial[k][1], f"{name}: state differs from the serial run"


def test_functional_calls_from_many_threads_equal_serial() -> None:
    """The functional layer with explicit thread counts (1, 2, 3), from 6 Python threads at once,
    each on its own arrays; plus FlatParams arenas."""
    n = 150_001
    rng = np.random.default_rng(7)
    jobs = []
    for k in range(6):
        p = rng.standard_normal(n).astype(np.float32)
        gs = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
        jobs.append((p, gs, 1 + k % 3))

    def run_one(p: np.ndarray, gs: List[np.ndarray], threads: int) -> Tuple[np.ndarray, ...]:
        p = p.copy()
        m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
        for t, g in enumerate(gs, 1):
            F.adam(p, g, m, v, vmax, step=t, lr=1e-2, amsgrad=True, threads=threads)
        return p, m, v, vmax

    serial = [run_one(*j) for j in jobs]
    results: List[Any] = [None] * len(jobs)

    def worker(k: int) -> Callable[[], None]:
        def run() -> None:
            results[k] = run_one(*jobs[k])

        return run

    _run_threads([worker(k) for k in range(len(jobs))])
    for k in range(len(jobs)):
        for a, b in zip(results[k], serial[k]):
            assert a.tobytes() == b.tobytes(), f"job {k} (threads={jobs[k][2]}) differs from the serial run"


def test_arena_optimizers_in_threads_equal_serial() -> None:
    rng = np.random.default_rng(11)
    shapes = [(300, 200), (200,), (200, 150)]
    inits = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(4)]
    grads = [[rng.standard_normal(sum(int(np.prod(s)) for s in shapes)).astype(np.float32) for _ in range(5)]
             for _ in range(4)]  # fmt: skip

    def run_one(k: int) -> Tuple[bytes, List[Dict[str, Any]]]:
        arena = fusedopt.FlatParams(inits[k])
        opt = fusedopt.Adam(arena, lr=1e-2, amsgrad=k % 2 == 0)
        for g in grads[k]:
            arena.flat_grad[...] = g
            opt.step()
        return arena.flat.tobytes(), _state_bytes(opt)

    serial = [run_one(k) for k in range(4)]
    results: List[Any] = [None] * 4

    def worker(k: int) -> Callable[[], None]:
        def run() -> None:
            results[k] = run_one(k)

        return run

    _run_threads([worker(k) for k in range(4)])
    assert results == serial


@pytest.mark.parametrize("name, factory", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_same_optimizer_two_threads_identical_grads(name: str, factory: Callable[[List[np.ndarray]], Any]) -> None:
    """Two threads, one optimizer, the same gradient every step: any serialization of the
    2*K steps gives the same result, which must be the serial run of 2*K steps."""
    k_steps = 25
    params0, grads = _problem(3, np.float32, (40_000, 7), 1)
    g = grads[0]
    for a in g:
        a.setflags(write=False)  # shared by both threads, read only

    serial_params = [p.copy() for p in params0]
    serial = factory(serial_params)
    for _ in range(2 * k_steps):
        serial.step(g)

    params = [p.copy() for p in params0]
    opt = factory(params)

    def worker() -> None:
        for _ in range(k_steps):
            opt.step(g)

    _run_threads([worker, worker])
    for i, (a, b) in enumerate(zip(params, serial_params)):
        assert a.tobytes() == b.tobytes(), f"{name}: params[{i}] differs from 2*{k_steps} serial steps"
    assert _state_bytes(opt) == _state_bytes(serial)
    for s in opt.state:
        if "step" in s:
            assert s["step"] == 2 * k_steps


@pytest.mark.parametrize("name, factory", [c for c in CONFIGS if c[0] in ("Adam-amsgrad", "SGD-momentum-nesterov",
                                                                         "RMSprop-centered-momentum", "Adagrad")],
                         ids=["SGD-momentum-nesterov", "RMSprop-centered-momentum", "Adam-amsgrad", "Adagrad"])  # fmt: skip
def test_same_optimizer_two_threads_is_some_interleaving(name: str, factory: Callable[[List[np.ndarray]], Any]) -> None:
    """Two threads, one optimizer, different gradient sequences: the result is exactly one of the
    C(2K, K) serial interleavings of the two sequences (each step is atomic)."""
    k_steps = 3
    params0, ga = _problem(5, np.float64, (5_000, 3), k_steps)
    _, gb = _problem(6, np.float64, (5_000, 3), k_steps)
    outcomes = set()
    for order in itertools.combinations(range(2 * k_steps), k_steps):
        ps = [p.copy() for p in params0]
        o = factory(ps)
        ia = ib = 0
        for slot in range(2 * k_steps):
            if slot in order:
                o.step(ga[ia])
                ia += 1
            else:
                o.step(gb[ib])
                ib += 1
        outcomes.add(tuple(p.tobytes() for p in ps))
    for _rep in range(10):
        params = [p.copy() for p in params0]
        opt = factory(params)

        def worker(o: Any, seq: List[List[np.ndarray]]) -> Callable[[], None]:
            def run() -> None:
                for g in seq:
                    o.step(g)

            return run

        _run_threads([worker(opt, ga), worker(opt, gb)])
        assert tuple(p.tobytes() for p in params) in outcomes, f"{name}: result is no serial interleaving"
        for s in opt.state:
            if "step" in s:
                assert s["step"] == 2 * k_steps


def test_same_optimizer_many_threads_with_bad_calls_in_between() -> None:
    """Four threads hammer one optimizer; two of them also make invalid calls (wrong length,
    wrong dtype). The invalid calls raise, never corrupt, and the valid steps all count."""
    params0, grads = _problem(9, np.float32, (10_000, 5), 1)
    g = grads[0]
    params = [p.copy() for p in params0]
    opt = fusedopt.Adam(params, lr=1e-3)
    serial_params = [p.copy() for p in params0]
    serial = fusedopt.Adam(serial_params, lr=1e-3)
    n_good = 40
    errors: List[str] = []

    def good() -> None:
        for _ in range(n_good):
            opt.step(g)

    def bad() -> None:
        for _ in range(n_good):
            try:
                opt.step(g[:1])
            except ValueError as exc:
                errors.append(str(exc))
            try:
                opt.step([x.astype(np.float64) for x in g])
            except TypeError as exc:
                errors.append(str(exc))
            opt.step(g)

    _run_threads([good, good, bad, bad])
    for _ in range(4 * n_good):
        serial.step(g)
    assert len(errors) == 4 * n_good
    assert all("grads" in e for e in errors)
    assert [p.tobytes() for p in params] == [p.tobytes() for p in serial_params]
    assert all(s["step"] == 4 * n_good for s in opt.state)
