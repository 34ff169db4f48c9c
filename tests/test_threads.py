"""Threads: results independent of the OpenMP thread count, the thread-count settings, the GIL
released during a step, and concurrent Python threads stepping their own optimizers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, functional, reference

LARGE = 300_001

# test name -> (algorithm, state slots in positional order (None: slot unused), hyperparameters)
ALGOS = {
    "sgd": ("sgd", [None], {}),
    "sgd-nesterov-wd-max": ("sgd", ["b"], dict(momentum=0.9, nesterov=True, weight_decay=0.05, maximize=True)),
    "sgd-dampening": ("sgd", ["b"], dict(momentum=0.9, dampening=0.3)),
    "momentum-bc-wd": ("momentum", ["v"], dict(bias_correction=True, weight_decay=0.05)),
    "rmsprop": ("rmsprop", ["v", None, None], {}),
    "rmsprop-centered-momentum-wd-max": ("rmsprop", ["v", "gbar", "b"], dict(centered=True, momentum=0.9, weight_decay=0.05, maximize=True)),
    "adam-l2-amsgrad-max": ("adam", ["m", "v", "vmax"], dict(weight_decay=0.05, amsgrad=True, maximize=True)),
    "adamw": ("adamw", ["m", "v", None], {}),
    "adagrad-wd-decay-max": ("adagrad", ["s"], dict(weight_decay=0.05, lr_decay=0.1, maximize=True)),
}  # fmt: skip


def step_kwargs(algo: str, t: int) -> dict:
    if algo == "sgd":
        return {"first_step": t == 1}
    return {} if algo == "rmsprop" else {"step": t}


def make_problem(name: str, shapes, dtype, seed: int = 0, n_steps: int = 3):
    """Initial params/states (per tensor) and per-step gradients."""
    algo, slots, _ = ALGOS[name]
    rng = np.random.default_rng(seed)
    params = [np.array(rng.standard_normal(s), dtype=dtype) for s in shapes]
    states = [
        [None if slot is None else np.array(np.abs(rng.standard_normal(s)) * 0.1, dtype=dtype) for slot in slots]
        for s in shapes
    ]
    grads = [[np.array(rng.standard_normal(s) * (10.0**-t), dtype=dtype) for s in shapes] for t in range(n_steps)]
    return params, states, grads


def run_functional(name: str, params, states, grads_per_step, threads):
    """Copies the inputs, runs every step as one list call with ``threads``, returns the arrays."""
    algo, slots, hyper = ALGOS[name]
    p = [x.copy() for x in params]
    s = [[None if x is None else x.copy() for x in st] for st in states]
    per_slot = [None if slot is None else [st[j] for st in s] for j, slot in enumerate(slots)]
    fn = getattr(functional, algo)
    for t, grads in enumerate(grads_per_step, start=1):
        fn(p, grads, *per_slot, lr=0.01, threads=threads, **step_kwargs(algo, t), **hyper)
    return p, s


def assert_same_bits(a: np.ndarray, b: np.ndarray, what: str) -> None:
    u = np.uint32 if a.dtype == np.float32 else np.uint64
    assert a.shape == b.shape and a.dtype == b.dtype, what
    diff = np.flatnonzero(a.reshape(-1).view(u) != b.reshape(-1).view(u))
    assert diff.size == 0, f"{what}: {diff.size} elements differ, first at {diff[:5].tolist()}"


# ---- results independent of the thread count ------------------------------------------------


@pytest.mark.parametrize("name", list(ALGOS))
def test_bitwise_identical_across_thread_counts(isa, dtype, name):
    shapes = [(LARGE,)]
    params, states, grads = make_problem(name, shapes, dtype)
    p1, s1 = run_functional(name, params, states, grads, threads=1)
    assert not np.array_equal(p1[0], params[0])
    # threads=1 agrees with the specification too
    algo, _, hyper = ALGOS[name]
    rp, rs = params[0].copy(), [None if x is None else x.copy() for x in states[0]]
    for t, g in enumerate(grads, start=1):
        getattr(reference, algo)(rp, g[0], *rs, lr=0.01, **step_kwargs(algo, t), **hyper)
    assert_same_bits(p1[0], rp, "threads=1 vs reference")
    for n in (2, 3, 4, 8):
        pn, sn = run_functional(name, params, states, grads, threads=n)
        assert_same_bits(pn[0], p1[0], f"params, threads={n}")
        for j, (a, b) in enumerate(zip(sn[0], s1[0])):
            if a is not None:
                assert_same_bits(a, b, f"state {j}, threads={n}")


@pytest.mark.parametrize("name", ["sgd-nesterov-wd-max", "adam-l2-amsgrad-max", "rmsprop-centered-momentum-wd-max"])
def test_list_call_identical_across_thread_counts(dtype, name):
    """Many tensors in one call: the thread cuts land inside different tensors per count; the
    default policy (threads=None, with set_num_threads) gives the same bits too."""
    shapes = [(LARGE,), (17,), (), (0,), (40_000,), (5,), (3, 1001), (65,)]
    params, states, grads = make_problem(name, shapes, dtype, seed=1)
    p1, s1 = run_functional(name, params, states, grads, threads=1)
    runs = [(n, None) for n in (2, 3, 4, 8)] + [(None, 3), (None, 1)]
    for n, global_threads in runs:
        if global_threads:
            fusedopt.set_num_threads(global_threads)
        try:
            pn, sn = run_functional(name, params, states, grads, threads=n)
        finally:
            if global_threads:
                fusedopt.set_num_threads(None)
        for i in range(len(shapes)):
            assert_same_bits(pn[i], p1[i], f"params[{i}] threads={n} num_threads={global_threads}")
            for j, (a, b) in enumerate(zip(sn[i], s1[i])):
                if a is not None:
                    assert_same_bits(a, b, f"state {j}[{i}] threads={n}")


def _at_phase(a, phase: int):
    """A copy of ``a`` whose data starts ``phase`` elements past a 64-byte boundary."""
    raw = np.empty(a.size + 64, dtype=a.dtype)
    start = (-raw.ctypes.data) % 64 // a.dtype.itemsize + phase
    out = raw[start : start + a.size].reshape(a.shape)
    out[...] = a
    assert out.ctypes.data % 64 == phase * a.dtype.itemsize % 64
    return out


@pytest.mark.parametrize("name", ["sgd-nesterov-wd-max", "momentum-bc-wd", "rmsprop-centered-momentum-wd-max",
                                  "adam-l2-amsgrad-max", "adagrad-wd-decay-max"])  # fmt: skip
def test_bitwise_identical_at_every_alignment(isa, dtype, name):
    """The kernels run each range as a head up to the parameter's next 64-byte boundary and an
    aligned vector loop, and cut thread ranges at the parameter's boundaries: every phase of the
    parameter and of the other arrays (equal or different), every thread count, the same bits as
    the specification."""
    per_line = 64 // np.dtype(dtype).itemsize
    shapes = [(LARGE,), (3,), (per_line + 1,), (2 * per_line - 1,), (1000,)]
    params, states, grads = make_problem(name, shapes, dtype, seed=2, n_steps=2)
    algo, _, hyper = ALGOS[name]
    expected = []
    for k in range(len(shapes)):
        rp, rs = params[k].copy(), [None if x is None else x.copy() for x in states[k]]
        for t, g in enumerate(grads, start=1):
            getattr(reference, algo)(rp, g[k], *rs, lr=0.01, **step_kwargs(algo, t), **hyper)
        expected.append((rp, rs))
    fn = getattr(functional, algo)
    for p_phase, other_phase in [(0, 0), (1, 1), (per_line - 1, per_line - 1), (3, 0), (0, 5), (2, 7)]:
        for threads in (1, 2, 3):
            pn = [_at_phase(x, (p_phase + k) % per_line) for k, x in enumerate(params)]
            sn = [[None if x is None else _at_phase(x, (other_phase + k + j) % per_line) for j, x in enumerate(st)]
                  for k, st in enumerate(states)]  # fmt: skip
            gn = [[_at_phase(x, (other_phase + 3 * k) % per_line) for k, x in enumerate(gs)] for gs in grads]
            per_slot = [None if sn[0][j] is None else [st[j] for st in sn] for j in range(len(sn[0]))]
            for t, g in enumerate(gn, start=1):
                fn(pn, g, *per_slot, lr=0.01, threads=threads, **step_kwargs(algo, t), **hyper)
            for k, (rp, rs) in enumerate(expected):
                what = f"tensor {k}, phases {p_phase}/{other_phase}, threads={threads}"
                assert_same_bits(pn[k], rp, "params " + what)
                for j, (a, b) in enumerate(zip(sn[k], rs)):
                    if a is not None:
                        assert_same_bits(a, b, f"state {j} " + what)


# ---- thread-count settings -------------------------------------------------------------------


@pytest.fixture
def restore_num_threads():
    yield
    fusedopt.set_num_threads(None)


def test_set_get_num_threads_round_trip(restore_num_threads):
    default = fusedopt.get_num_threads()
    assert isinstance(default, int) and default >= 1
    assert fusedopt.set_num_threads(3) == default
    assert fusedopt.get_num_threads() == 3
    assert fusedopt.set_num_threads(1) == 3
    assert fusedopt.get_num_threads() == 1
    assert fusedopt.set_num_threads(None) == 1
    assert fusedopt.get_num_threads() == default
    assert fusedopt.show_config(print_=False)["num_threads"] == default


@pytest.mark.parametrize(
    "value, error",
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), (False, TypeError), ("2", TypeError), (2.0, TypeError)],
    ids=["0", "-1", "1.5", "True", "False", "str", "2.0"],
)  # fmt: skip
def test_set_num_threads_validation(value, error, restore_num_threads):
    fusedopt.set_num_threads(2)
    with pytest.raises(error, match="n "):
        fusedopt.set_num_threads(value)
    assert fusedopt.get_num_threads() == 2


def _subprocess_num_threads(omp_num_threads, code="import fusedopt; print(fusedopt.get_num_threads())"):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("env, expected", [("1", 1), ("3", 3), ("3,2", 3), ("2", 2)])
def test_default_honours_omp_num_threads(env, expected):
    if not _core.openmp_enabled:
        expected = 1
    assert _subprocess_num_threads(env) == str(expected)


def test_default_without_omp_num_threads_is_cpu_count():
    code = """
        import os, fusedopt
        print(fusedopt.get_num_threads(), len(os.sched_getaffinity(0)))
    """
    got, cpus = _subprocess_num_threads(None, code).split()
    assert int(got) == (int(cpus) if _core.openmp_enabled else 1)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux CPU affinity")
def test_default_honours_cpu_affinity():
    """The default counts the CPUs this process may run on (e.g. under taskset or a cgroup cpuset)."""
    code = """
        import os
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        import fusedopt
        print(fusedopt.get_num_threads())
    """
    assert _subprocess_num_threads(None, code) == "1"


def test_set_num_threads_overrides_env():
    code = """
        import numpy as np, fusedopt
        assert fusedopt.set_num_threads(2) == 1
        p = np.zeros(100_000, np.float32)
        fusedopt.functional.sgd(p, np.ones_like(p), lr=1.0)  # above the serial threshold: 2 threads
        assert (p == -1).all()
        print(fusedopt.get_num_threads())
    """
    assert _subprocess_num_threads("1", code) == "2"


def _small_call(name, threads):
    algo, slots, hyper = ALGOS[name]
    params, states, grads = make_problem(name, [(33,)], np.float32, n_steps=1)
    before = [params[0].copy()] + [x.copy() for x in states[0] if x is not None] + [grads[0][0].copy()]
    after = [params[0]] + [x for x in states[0] if x is not None] + [grads[0][0]]
    try:
        getattr(functional, algo)(
            params[0], grads[0][0], *states[0], lr=0.01, threads=threads, **step_kwargs(algo, 1), **hyper
        )
    finally:
        for a, b in zip(after, before):
            assert_same_bits(a, b, "an array was modified by a rejected call")


@pytest.mark.parametrize("name", list(ALGOS))
@pytest.mark.parametrize(
    "threads, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError), ("4", TypeError)],
    ids=["0", "-2", "1.5", "True", "str"],
)  # fmt: skip
def test_bad_threads_argument(name, threads, error):
    with pytest.raises(error, match="threads"):
        _small_call(name, threads)


# ---- the GIL is released during a step ---------------------------------------------------------


def _mid_call_observations(work, arr: np.ndarray, n_calls: int):
    """Run ``work(k)`` for k = 1..n_calls in a background thread while the main thread keeps
    reading the first and last elements of ``arr``, which ``work`` rewrites in order, every element
    to the same new value. Seeing them differ means the main thread ran Python code *during* a call
    (a call that holds the GIL can never be observed half done). Returns (observations of a half
    done call, main-thread loop iterations)."""
    done, started = threading.Event(), threading.Event()
    errors = []

    def worker():
        started.set()
        try:
            for k in range(1, n_calls + 1):
                work(k)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            done.set()

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    assert started.wait(30)
    mid = loops = 0
    while not done.is_set():
        loops += 1
        if arr[0] != arr[-1]:
            mid += 1
    th.join(60)
    assert not errors, errors
    return mid, loops


def test_gil_released_during_step():
    """While a background thread runs Adam on 2**22 floats (threads=1) again and again, the main
    thread keeps executing Python and catches the parameters half updated. No timing ratios: a
    step holding the GIL cannot be observed half done (checked with a control that holds it)."""
    n = 1 << 22
    p = np.zeros(n, np.float32)
    g = np.full(n, 0.5, np.float32)
    m, v = np.zeros_like(p), np.zeros_like(p)

    def adam_step(k):
        functional.adam(p, g, m, v, step=k, lr=1e-3, threads=1)

    mid, loops = _mid_call_observations(adam_step, p, n_calls=12)
    assert p[0] == p[-1] < 0 and np.all(p == p[0])  # 12 complete steps, all elements alike
    assert loops > 0 and mid > 0, f"the main thread never ran during a step ({loops} loop iterations)"

    # control: the same probe on an operation that holds the GIL (object-dtype ufunc) sees nothing
    objs = np.zeros(1 << 19, dtype=object)
    mid_held, loops_held = _mid_call_observations(lambda k: np.add(objs, 1, out=objs), objs, n_calls=4)
    assert mid_held == 0 and objs[0] == objs[-1] == 4


# ---- concurrent optimizers ------------------------------------------------------------------------


def _optimizers(params_sets):
    makers = [
        lambda ps: fusedopt.SGD(ps, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3),
        lambda ps: fusedopt.Adam(ps, lr=1e-3, amsgrad=True),
        lambda ps: fusedopt.AdamW(ps, lr=1e-3),
        lambda ps: fusedopt.RMSprop(ps, lr=1e-3, centered=True, momentum=0.5),
        lambda ps: fusedopt.Adagrad(ps, lr=0.01, initial_accumulator_value=0.1, lr_decay=0.01),
        lambda ps: fusedopt.Momentum(ps, lr=0.01, bias_correction=True),
        lambda ps: fusedopt.SGD(ps, lr=0.01, momentum=0.9, dampening=0.2),
        lambda ps: fusedopt.Adam(ps, lr=1e-3, weight_decay=1e-2, maximize=True),
    ]
    return [makers[i % len(makers)](ps) for i, ps in enumerate(params_sets)]


def test_concurrent_optimizers_match_serial_run(dtype):
    n_workers, n_steps = 8, 10
    shapes = [(70_001,), (1000,), (17,), (4, 4)]  # the first above the serial threshold: OpenMP teams
    rng = np.random.default_rng(5)
    init = [[np.array(rng.standard_normal(s), dtype=dtype) for s in shapes] for _ in range(n_workers)]
    grads = [
        [[np.array(rng.standard_normal(s), dtype=dtype) for s in shapes] for _ in range(n_steps)]
        for _ in range(n_workers)
    ]

    serial_params = [[x.copy() for x in ps] for ps in init]
    for w, opt in enumerate(_optimizers(serial_params)):
        for t in range(n_steps):
            opt.step(grads[w][t])

    conc_params = [[x.copy() for x in ps] for ps in init]
    opts = _optimizers(conc_params)
    barrier = threading.Barrier(n_workers)
    errors = []

    def worker(w):
        try:
            barrier.wait(30)
            for t in range(n_steps):
                opts[w].step(grads[w][t])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(n_workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    for w in range(n_workers):
        assert opts[w].state[0].get("step", n_steps) == n_steps  # SGD keeps no step count
        for i in range(len(shapes)):
            assert_same_bits(conc_params[w][i], serial_params[w][i], f"worker {w} params[{i}]")
            assert not np.array_equal(conc_params[w][i], init[w][i])


def test_concurrent_functional_calls_on_shared_readonly_grads(dtype):
    """Threads may share read-only inputs (the same gradient array) while writing their own params."""
    n = 200_003
    rng = np.random.default_rng(9)
    g = np.array(rng.standard_normal(n), dtype=dtype)
    g.flags.writeable = False
    p0 = np.array(rng.standard_normal(n), dtype=dtype)
    expected = p0.copy()
    m, v = np.zeros_like(p0), np.zeros_like(p0)
    for t in range(1, 6):
        functional.adam(expected, g, m, v, step=t, lr=1e-2, threads=1)

    results = [p0.copy() for _ in range(4)]
    errors = []

    def worker(k):
        try:
            mm, vv = np.zeros_like(p0), np.zeros_like(p0)
            for t in range(1, 6):
                functional.adam(results[k], g, mm, vv, step=t, lr=1e-2, threads=1 + k % 3)
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    for k in range(4):
        assert_same_bits(results[k], expected, f"thread {k}")
