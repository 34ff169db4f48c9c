"""Runtime reliability (issue 11, items 2, 8 and 9): fork, floating-point mode, thread-count bound.

* fork: libgomp's thread team does not survive ``fork()``. A child forked (``os.fork``, or a
  ``multiprocessing`` pool with the ``fork`` start method) after the parent ran a multi-threaded
  step must complete its steps: fusedopt runs every step of such a child (and of its own
  children) on one thread, with bitwise the same results. A child forked before any team was
  started keeps its threads. Each scenario runs in a fresh interpreter that forks; every wait has
  a deadline, so a hang fails the test (and the hung processes are killed) instead of hanging CI.
* floating-point mode: every OpenMP worker runs with the calling thread's floating-point control
  state (x86-64 MXCSR: flush-to-zero, denormals-are-zero, rounding; aarch64 FPCR). With subnormal
  inputs, under ``torch.set_flush_denormal(True)`` and after switching it back (the issue's
  sequence), and under a directed rounding mode, 1, 2 and 3 threads give bitwise the same result,
  equal to the NumPy reference computed in the same mode, on every ISA the CPU supports.
* thread counts: ``threads=`` and ``set_num_threads`` accept 1..MAX_THREADS (1024) and raise
  ``ValueError`` naming the argument otherwise, before anything is modified; ``OMP_NUM_THREADS``
  above the bound is clamped.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import textwrap
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, _scalars, _threads, functional, reference

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_openmp = pytest.mark.skipif(not _core.openmp_enabled, reason="built without OpenMP: no thread team")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")


def assert_same_bits(a: np.ndarray, b: np.ndarray, what: str) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, what
    u = np.uint32 if a.dtype == np.float32 else np.uint64
    diff = np.flatnonzero(a.reshape(-1).view(u) != b.reshape(-1).view(u))
    assert diff.size == 0, f"{what}: {diff.size} elements differ, first at {diff[:5].tolist()}"


# =============================================================================================
# Item 2: fork
# =============================================================================================

# Shared by every fork scenario (run with `python -c` in a fresh interpreter). `work(threads)`
# runs every kind of parallel region fusedopt has (each algorithm's step, the global norm inside
# a clipped step, EMA, an optimizer class) and returns a digest of every array it wrote.
# `forked(fn)` runs fn() in a child made by os.fork() and returns ("ok", fn's JSON result),
# ("hang", None) after the deadline (the child is killed) or ("error", exit status).
_FORK_PRELUDE = textwrap.dedent(
    """
    import hashlib, json, os, signal, sys, time
    import numpy as np
    import fusedopt
    from fusedopt import _core, functional

    DEADLINE = float(os.environ["FORK_TEST_DEADLINE"])

    def work(threads):
        rng = np.random.default_rng(7)
        h = hashlib.sha256()
        shapes = [(40_000,), (33,), (25_007,)]
        p = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for name, n_state, kw in [
            ("sgd", 1, dict(momentum=0.9, first_step=True)), ("momentum", 1, dict(step=1)),
            ("rmsprop", 3, dict(centered=True, momentum=0.9)), ("adam", 3, dict(step=1, amsgrad=True)),
            ("adamw", 2, dict(step=1)), ("adagrad", 1, dict(step=1)), ("trace", 1, {}),
        ]:
            params = [x.copy() for x in p]
            states = [[np.zeros_like(x) for x in p] for _ in range(n_state)]
            getattr(functional, name)(params, g, *states, lr=0.01, max_grad_norm=1.0, threads=threads, **kw)
            for a in params + [x for st in states for x in st]:
                h.update(a.tobytes())
        h.update(np.float64(functional.global_norm(g, threads=threads)).tobytes())
        ema = fusedopt.EMA([x.copy() for x in p], decay=0.9, threads=threads)
        ema.update()
        for a in ema.averaged():
            h.update(a.tobytes())
        saved = fusedopt.set_num_threads(threads)
        try:  # an optimizer class (native plan); large enough for the default policy to thread
            big = [rng.standard_normal(300_000).astype(np.float32)]
            opt = fusedopt.Adam([x.copy() for x in big], lr=0.01)
            opt.step([x * 0.5 for x in big])
            h.update(opt.params[0].tobytes())
        finally:
            fusedopt.set_num_threads(saved)
        return h.hexdigest()

    def serial_after_fork():
        fn = getattr(_core, "serial_after_fork", None)  # (not in builds before the fix)
        return None if fn is None else bool(fn())

    def forked(fn, deadline=DEADLINE):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 0
            try:
                os.close(r)
                os.write(w, json.dumps(fn()).encode())
            except BaseException:
                import traceback
                traceback.print_exc()
                status = 3
            finally:
                os._exit(status)
        os.close(w)
        deadline = time.monotonic() + deadline
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                os.close(r)
                return ["hang", None]
            time.sleep(0.01)
        data = b""
        while True:
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            data += chunk
        os.close(r)
        if status != 0:
            return ["error", status]
        return ["ok", json.loads(data)]

    def start_team():
        # an explicit multi-threaded step: the parent's OpenMP team exists from here on
        p = np.zeros(100_000, np.float32)
        functional.sgd(p, np.ones_like(p), lr=1.0, threads=2)
        assert (p == -1).all()
    """
)


def _run_fork_scenario(body: str, deadline: float = 30.0) -> Any:
    """Runs prelude + body in a fresh interpreter; the body prints one JSON line. The interpreter
    gets its own session and writes to files, not pipes: a hung (killed) child's own child could
    otherwise keep a pipe open; every process left in the session is killed at the end."""
    env = dict(os.environ, FORK_TEST_DEADLINE=str(deadline))
    env.pop("OMP_NUM_THREADS", None)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _FORK_PRELUDE + textwrap.dedent(body)],
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=3 * deadline + 60)
        except subprocess.TimeoutExpired:
            pytest.fail("the fork scenario did not finish in time (a hang past the in-script deadlines)")
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left in the session (hung processes)
            proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    assert proc.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


@needs_fork
@needs_openmp
def test_forked_child_completes_threaded_steps() -> None:
    """The issue's scenario: the parent runs a threads=2 step, forks; the child steps with
    threads=2 (every kind of parallel region), and so does the child's own child."""
    result = _run_fork_scenario(
        """
        start_team()
        expected = work(1)
        assert work(2) == expected
        def child():
            return {"digest": work(2), "serial": serial_after_fork(),
                    "grandchild": forked(lambda: {"digest": work(2), "serial": serial_after_fork()}, DEADLINE / 3)}
        print(json.dumps({"parent_serial": serial_after_fork(), "expected": expected, "child": forked(child)}))
        """
    )
    status, child = result["child"]
    assert status != "hang", "a child forked after a multi-threaded step hung at its first threaded step"
    assert status == "ok", f"the forked child failed (exit status {child})"
    assert child["digest"] == result["expected"], "the forked child's results differ from the parent's"
    assert result["parent_serial"] is False
    assert child["serial"] is True  # the child runs serially (documented choice)
    g_status, grandchild = child["grandchild"]
    assert g_status == "ok", f"the child's own forked child: {g_status} {grandchild}"
    assert grandchild == {"digest": result["expected"], "serial": True}


@needs_fork
@needs_openmp
def test_multiprocessing_fork_pool_completes_threaded_steps() -> None:
    """A real multiprocessing pool with the fork start method, made after a threads=2 step."""
    result = _run_fork_scenario(
        """
        import multiprocessing

        def task(threads):
            return work(threads), serial_after_fork()

        start_team()
        expected = work(1)
        pool = multiprocessing.get_context("fork").Pool(2)
        try:
            out = pool.map_async(task, [2, 2, 2, 1]).get(timeout=DEADLINE)
            status = "ok"
        except multiprocessing.TimeoutError:
            out, status = None, "hang"
        finally:
            pool.terminate()  # SIGTERM: also ends workers blocked in the OpenMP runtime
            pool.join()
        print(json.dumps({"status": status, "expected": expected, "out": out}))
        """
    )
    assert result["status"] != "hang", "a fork-pool worker hung at its first threaded step"
    for digest, serial in result["out"]:
        assert digest == result["expected"]
        assert serial is True


@needs_fork
@needs_openmp
def test_child_forked_before_any_team_keeps_its_threads() -> None:
    """The serial mode is only for children of a process that had started a team: a child
    forked before any threaded step runs its own team (and its children then run serially)."""
    result = _run_fork_scenario(
        """
        expected = work(1)  # threads=1 only: no team in the parent
        def child():
            return {"serial_before": serial_after_fork(), "digest": work(2),
                    "serial_after": serial_after_fork(),
                    "threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
                    "grandchild": forked(lambda: {"digest": work(2), "serial": serial_after_fork()}, DEADLINE / 3)}
        print(json.dumps({"expected": expected, "child": forked(child)}))
        """
    )
    status, child = result["child"]
    assert status == "ok", (status, child)
    assert child["digest"] == result["expected"]
    g_status, grandchild = child["grandchild"]
    assert g_status != "hang", "a child's child forked after the child's threaded step hung"
    assert [g_status, grandchild] == ["ok", {"digest": result["expected"], "serial": True}]
    assert child["serial_before"] is False and child["serial_after"] is False
    if child["threads"] is not None:  # Linux: the child started OpenMP worker threads of its own
        assert child["threads"] >= 2


# =============================================================================================
# Item 8: the floating-point mode of OpenMP workers
# =============================================================================================

# name -> (functional/reference entry point, state slots in positional order, hyperparameters)
FP_CONFIGS: Dict[str, Tuple[str, List[bool], Dict[str, Any]]] = {
    "sgd": ("sgd", [False], dict(lr=0.5)),
    "sgd-momentum-nesterov-wd": ("sgd", [True], dict(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.25)),
    "trace": ("trace", [True], dict(lr=0.5, decay=0.9)),
    "momentum-bc-wd": ("momentum", [True], dict(lr=0.5, weight_decay=0.25, bias_correction=True, step=3)),
    "rmsprop-centered-momentum": ("rmsprop", [True, True, True], dict(lr=0.01, centered=True, momentum=0.9)),
    "adam-l2-amsgrad": ("adam", [True, True, True], dict(lr=0.01, weight_decay=0.25, amsgrad=True, step=2)),
    "adamw": ("adamw", [True, True, False], dict(lr=0.01, step=2)),
    "adam-scaled-clipped": ("adam", [True, True, False], dict(lr=0.01, step=1, grad_scale=0.5, clip_value=0.25)),
    "adagrad-wd-decay": ("adagrad", [True], dict(lr=0.5, weight_decay=0.25, lr_decay=0.1, step=2)),
}  # fmt: skip

# Sizes: 3 threads all get work (cuts fall inside tensors), and the global norm has 6 blocks.
FP_SHAPES = [(4099,), (33,), (2500,)]


def _tiny_inputs(dtype: np.dtype, seed: int) -> Tuple[List[np.ndarray], List[np.ndarray], List[List[np.ndarray]]]:
    """Parameters, gradients and states, mostly subnormal (|x| < tiny), some small normals."""
    rng = np.random.default_rng(seed)
    tiny = float(np.finfo(dtype).tiny)

    def arr(shape: Tuple[int, ...], positive: bool = False) -> np.ndarray:
        x = rng.uniform(0.0 if positive else -1.0, 1.0, size=shape) * tiny
        x[::7] *= 3.0  # a few normal values next to subnormal ones
        return x.astype(dtype)

    params = [arr(s) for s in FP_SHAPES]
    grads = [arr(s) for s in FP_SHAPES]
    states = [[arr(s, positive=True) for s in FP_SHAPES] for _ in range(3)]  # non-negative: valid 2nd moments
    return params, grads, states


def _clip_value(hyper: Dict[str, Any], dtype: np.dtype) -> Dict[str, Any]:
    """clip_value scaled into the subnormal range of dtype (so that clipping really happens)."""
    out = dict(hyper)
    if "clip_value" in out:
        out["clip_value"] = float(out["clip_value"] * float(np.finfo(dtype).tiny))
    return out


def _fp_run(name: str, dtype: np.dtype, threads: Optional[int]) -> List[np.ndarray]:
    """One step of config `name` on copies of the inputs; threads=None: the NumPy reference."""
    algo, slots, hyper = FP_CONFIGS[name]
    hyper = _clip_value(hyper, dtype)
    params, grads, states = _tiny_inputs(dtype, seed=len(name))
    used = [st if on else None for st, on in zip(states, slots)]
    if threads is None:
        fn = getattr(reference, algo)
        for k in range(len(params)):
            fn(params[k], grads[k], *[None if st is None else st[k] for st in used], **hyper)
    else:
        getattr(functional, algo)(params, grads, *used, threads=threads, **hyper)
    return params + [x for st in used if st is not None for x in st]


def _norm_run(dtype: np.dtype, threads: Optional[int]) -> List[np.ndarray]:
    """Sum of squares (the global norm's parallel pass) of tiny values: float32 subnormals (normal
    squares in float64, unless denormals-are-zero) or float64 values whose squares are subnormal."""
    rng = np.random.default_rng(5)
    scale = float(np.finfo(np.float32).tiny) if dtype == np.float32 else 1e-157
    xs = [(rng.uniform(-1.0, 1.0, size=s) * scale).astype(dtype) for s in FP_SHAPES]
    total = reference.sum_of_squares(xs) if threads is None else _core.sum_of_squares(xs, threads)
    return [np.array([total], dtype=np.float64)]


def _ema_run(dtype: np.dtype, threads: Optional[int]) -> List[np.ndarray]:
    params, _, states = _tiny_inputs(dtype, seed=11)
    averages = states[0]
    if threads is None:
        for a, p in zip(averages, params):
            reference.ema(a, p, decay=0.5)
        return averages
    s = _scalars.ema_scalars(decay=0.5)
    _core.ema(averages, params, *s, threads)
    return averages


FP_CASES = list(FP_CONFIGS) + ["sum_of_squares", "ema"]


def _fp_case(case: str, dtype: np.dtype, threads: Optional[int]) -> List[np.ndarray]:
    if case == "sum_of_squares":
        return _norm_run(dtype, threads)
    if case == "ema":
        return _ema_run(dtype, threads)
    return _fp_run(case, dtype, threads)


def _flushing() -> Tuple[bool, bool]:
    """(denormals-are-zero, flush-to-zero) of the calling thread, observed through NumPy."""
    sub = np.array([5e-324, 1e-300])
    daz = bool((sub[:1] * 1.0)[0] == 0.0)
    ftz = bool((sub[1:] * 1e-10)[0] == 0.0)
    return daz, ftz


@contextlib.contextmanager
def _flush_denormal(on: bool) -> Iterator[None]:
    torch = pytest.importorskip("torch", reason="torch.set_flush_denormal sets FTZ/DAZ (torch not installed)")
    before = _flushing()
    if not torch.set_flush_denormal(on):
        pytest.skip("torch.set_flush_denormal is not supported on this CPU")
    try:
        assert _flushing() == (on, on)
        yield
    finally:
        torch.set_flush_denormal(before[0] or before[1])
        assert _flushing() == before, "could not restore the floating-point mode"


def _check_mode(case: str, dtype: np.dtype, what: str) -> List[np.ndarray]:
    """Threads 2, 1, 3 bitwise equal to each other and to the reference (same mode); returns it."""
    ref = _fp_case(case, dtype, None)
    for threads in (2, 1, 3):
        got = _fp_case(case, dtype, threads)
        for j, (a, b) in enumerate(zip(got, ref)):
            assert_same_bits(a, b, f"{what}, threads={threads}, output {j} vs the NumPy reference")
    return ref


@needs_openmp
@pytest.mark.parametrize("case", FP_CASES)
def test_subnormals_independent_of_threads_under_flush_denormal(isa: str, dtype: np.dtype, case: str) -> None:
    """The issue's sequence: set_flush_denormal(True), threaded steps, set_flush_denormal(False),
    threaded steps; in each mode 1, 2 and 3 threads equal the reference computed in that mode."""
    with _flush_denormal(True):
        flushed = _check_mode(case, dtype, f"{isa} {dtype} {case} with FTZ/DAZ")
    ieee = _check_mode(case, dtype, f"{isa} {dtype} {case} after set_flush_denormal(False)")
    # the inputs are such that the mode matters (else this test could not fail)
    assert any(
        not np.array_equal(a.view(np.uint8), b.view(np.uint8)) for a, b in zip(flushed, ieee)
    ), "FTZ/DAZ changed no output: the inputs do not exercise the mode"
    with _flush_denormal(True):  # and back again: the workers follow every change
        _check_mode(case, dtype, f"{isa} {dtype} {case} with FTZ/DAZ again")


# fesetround constants of glibc (they differ per architecture)
_ROUND_UPWARD = {"x86_64": 0x800, "aarch64": 0x400000}.get(platform.machine())
_ROUND_NEAREST = 0


def _libm() -> Any:
    """The process' C math library (fegetround/fesetround), on Linux; else None."""
    if not sys.platform.startswith("linux"):
        return None
    lib = ctypes.CDLL(None)  # CPython is linked with libm
    return lib if hasattr(lib, "fesetround") and hasattr(lib, "fegetround") else None


def _round_run(case: str, threads: int) -> List[np.ndarray]:
    dtype = np.dtype(np.float32)
    if case == "sum_of_squares":
        xs = [np.random.default_rng(k).standard_normal(s).astype(dtype) for k, s in enumerate(FP_SHAPES)]
        return [np.array([_core.sum_of_squares(xs, threads)])]
    algo, slots, hyper = FP_CONFIGS[case]
    params = [np.random.default_rng(k).standard_normal(s).astype(dtype) for k, s in enumerate(FP_SHAPES)]
    grads = [np.random.default_rng(10 + k).standard_normal(s).astype(dtype) for k, s in enumerate(FP_SHAPES)]
    states = [[np.full(s, 0.3, dtype) for s in FP_SHAPES] if on else None for on in slots]
    getattr(functional, algo)(params, grads, *states, threads=threads, **hyper)
    return params + [x for st in states if st is not None for x in st]


@needs_openmp
@pytest.mark.skipif(_ROUND_UPWARD is None or _libm() is None, reason="fesetround constants known for Linux x86-64/aarch64")
@pytest.mark.parametrize("case", ["adam-l2-amsgrad", "rmsprop-centered-momentum", "sgd-momentum-nesterov-wd", "sum_of_squares"])
def test_rounding_mode_independent_of_threads(isa: str, case: str) -> None:
    """Rounding toward +inf in the calling thread: every thread count gives the same bits, which
    differ from round-to-nearest (the workers really use the caller's rounding mode)."""
    libm = _libm()
    assert libm.fegetround() == _ROUND_NEAREST
    nearest = _round_run(case, 1)
    results = {}
    try:
        assert libm.fesetround(_ROUND_UPWARD) == 0
        for threads in (2, 1, 3):
            results[threads] = _round_run(case, threads)
    finally:
        libm.fesetround(_ROUND_NEAREST)
    assert libm.fegetround() == _ROUND_NEAREST, "could not restore the rounding mode"
    for threads in (2, 3):
        for j, (a, b) in enumerate(zip(results[threads], results[1])):
            assert_same_bits(a, b, f"{isa} {case} rounding upward, threads={threads} vs 1, output {j}")
    assert any(not np.array_equal(a, b) for a, b in zip(results[1], nearest)), "the rounding mode changed nothing"


# =============================================================================================
# Item 9: the thread-count bound
# =============================================================================================

OUT_OF_RANGE = [0, -1, 1025, 4000, 2**31, 2**63, 2**64 + 1]


def _threads_calls(threads: int) -> Iterator[Tuple[str, Any, List[np.ndarray]]]:
    """(name, call, arrays the call could write) for every entry point taking threads=."""
    rng = np.random.default_rng(0)

    def arrays(k: int) -> List[np.ndarray]:
        return [rng.standard_normal(33).astype(np.float32) for _ in range(k)]

    for algo, n_state, kw in [
        ("sgd", 1, dict(momentum=0.9)), ("momentum", 1, dict(step=1)), ("rmsprop", 1, {}),
        ("adam", 2, dict(step=1)), ("adamw", 2, dict(step=1)), ("adagrad", 1, dict(step=1)), ("trace", 1, {}),
    ]:  # fmt: skip
        p, g, *st = arrays(2 + n_state)
        st = [np.abs(x) for x in st]
        fn = getattr(functional, algo)
        yield algo, (lambda fn=fn, p=p, g=g, st=st, kw=kw: fn(p, g, *st, lr=0.1, threads=threads, **kw)), [p, *st]
        yield f"{algo}+max_grad_norm", (
            lambda fn=fn, p=p, g=g, st=st, kw=kw: fn(p, g, *st, lr=0.1, max_grad_norm=1.0, threads=threads, **kw)
        ), [p, *st]
    (x,) = arrays(1)
    yield "global_norm", (lambda: functional.global_norm([x], threads=threads)), [x]
    (p,) = arrays(1)
    ema = fusedopt.EMA([p], threads=threads)
    yield "EMA.update", ema.update, [p, *ema.averages]


@pytest.mark.parametrize("threads", OUT_OF_RANGE)
def test_threads_argument_out_of_range(threads: int) -> None:
    for name, call, written in _threads_calls(threads):
        before = [a.copy() for a in written]
        with pytest.raises(ValueError, match=rf"^threads must be between 1 and 1024, got {threads}$"):
            call()
        for a, b in zip(written, before):
            assert_same_bits(a, b, f"{name}: an array was modified by a refused call")


@pytest.fixture
def restore_num_threads() -> Iterator[None]:
    yield
    fusedopt.set_num_threads(None)


@pytest.mark.parametrize("n", OUT_OF_RANGE)
def test_set_num_threads_out_of_range(n: int, restore_num_threads: None) -> None:
    fusedopt.set_num_threads(3)
    with pytest.raises(ValueError, match=rf"^n must be between 1 and 1024, got {n}$"):
        fusedopt.set_num_threads(n)
    assert fusedopt.get_num_threads() == 3
    # the bound itself is accepted (setting a count starts no thread)
    assert fusedopt.set_num_threads(fusedopt.MAX_THREADS) == 3
    assert fusedopt.get_num_threads() == 1024
    assert _threads.resolve(1024, 10, "adam") == 1024 and _threads.resolve(1, 10, "adam") == 1


def test_max_threads_is_public_and_shown() -> None:
    assert fusedopt.MAX_THREADS == _threads.MAX_THREADS == 1024
    assert "MAX_THREADS" in fusedopt.__all__
    info = fusedopt.show_config(print_=False)
    assert info["max_threads"] == 1024
    assert info["serial_after_fork"] is False


@needs_openmp
def test_omp_num_threads_above_the_bound_is_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OMP_NUM_THREADS above the bound is clamped (not an error, not thousands of threads); one
    that is no count is ignored. Checked in this process and at import in a fresh one."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    default = _threads.default_num_threads()
    for env, expected in [("4000", 1024), ("1025", 1024), ("9" * 5000, 1024), ("2000,4", 1024),
                          ("1024", 1024), ("0004,2", 4), ("\u00b2", default), ("0", default)]:  # fmt: skip
        monkeypatch.setenv("OMP_NUM_THREADS", env)
        assert _threads.default_num_threads() == expected, env
    code = "import fusedopt; print(fusedopt.get_num_threads(), fusedopt.show_config(print_=False)['num_threads'])"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="4000"), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1024", "1024"]


def _core_message_for_zero_threads() -> str:
    p = np.zeros(4, np.float32)
    s = _scalars.adam_scalars(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                              decoupled_weight_decay=False)  # fmt: skip
    try:
        _core.adam([p], [p.copy()], [p.copy()], [p.copy()], None, *s, *_scalars.NO_GRAD_TRANSFORM, False, False, 0)
    except Exception as exc:  # only the message matters here
        return str(exc)
    return ""


@pytest.mark.skipif(
    "1024" not in _core_message_for_zero_threads(),
    reason="the compiled core does not bound the thread count yet (cpp/bindings/arrays.cpp check_threads)",
)
@pytest.mark.parametrize("threads", [0, -1, 1025, 2**31])
def test_core_refuses_out_of_range_threads(threads: int) -> None:
    """The compiled core itself (called directly, below the Python layer) refuses the same range,
    with a ValueError (not pybind11's 'incompatible function arguments' for 2**31)."""
    p = np.ones(64, np.float32)
    g, m, v = np.full_like(p, 0.5), np.zeros_like(p), np.zeros_like(p)
    s = _scalars.adam_scalars(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                              decoupled_weight_decay=False)  # fmt: skip
    with pytest.raises(ValueError, match=rf"threads must be between 1 and 1024, got {threads}"):
        _core.adam([p], [g], [m], [v], None, *s, *_scalars.NO_GRAD_TRANSFORM, False, False, threads)
    assert (p == 1).all() and (m == 0).all() and (v == 0).all()
