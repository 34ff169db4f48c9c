"""fusedopt's OpenMP runtime next to torch's, and under threadpoolctl.

A Linux wheel vendors its own libgomp (auditwheel: ``fusedopt.libs/libgomp-<hash>.so.1.0.0``) and
torch vendors another (``torch/lib/libgomp.so.1``), so one process may hold two OpenMP runtimes,
each with its own thread pool; a source build links the system ``libgomp.so.1`` and shares
whichever copy with that SONAME is loaded first. Either way, in both import orders:

* both libraries do parallel work in the same process and get correct results (fusedopt bitwise
  equal to ``fusedopt.reference``, torch equal to NumPy), interleaved;
* fusedopt's kernels really start OpenMP threads (Linux: the process gains OS threads);
* ``fusedopt.set_num_threads`` and ``torch.set_num_threads`` do not change each other;
* threadpoolctl lists the OpenMP runtime that fusedopt's extension is linked to (found with
  ``dladdr`` on the ``omp_get_max_threads`` that ``_core`` resolves), and
  ``threadpool_limits(1)`` lowers fusedopt's default thread count, and only while it is active.

Each scenario runs in a fresh interpreter (``subprocess``): import order and which runtime gets
loaded are process-wide and cannot be undone. ``OMP_NUM_THREADS`` is removed from the child's
environment (it would override both libraries' defaults). torch is not imported into the pytest
process itself; the torch scenarios skip when it is not installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

import fusedopt
from fusedopt import _core

pytest.importorskip("threadpoolctl", reason="threadpoolctl is in the test extra")

HAVE_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (test extra)")
needs_openmp = pytest.mark.skipif(not _core.openmp_enabled, reason="built without OpenMP (e.g. macOS wheels)")
CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

# Shared by every child: a large Adam step (above every serial threshold) checked bitwise against
# the reference, the path of the OpenMP runtime _core is linked to, and an OS-thread count.
_PRELUDE = textwrap.dedent(
    """
    import ctypes, json, os, sys
    import numpy as np

    def adam_is_exact(fusedopt, threads, n=1 << 20, steps=2):
        rng = np.random.default_rng(n + (threads or 0))
        p = rng.standard_normal(n).astype(np.float32)
        m, v = np.zeros_like(p), np.zeros_like(p)
        rp, rm, rv = p.copy(), m.copy(), v.copy()
        for t in range(1, steps + 1):
            g = rng.standard_normal(n).astype(np.float32)
            fusedopt.functional.adam(p, g, m, v, step=t, lr=1e-2, weight_decay=0.1, threads=threads)
            fusedopt.reference.adam(rp, g, rm, rv, step=t, lr=1e-2, weight_decay=0.1)
        return bool(np.array_equal(p, rp) and np.array_equal(m, rm) and np.array_equal(v, rv))

    def os_threads():
        try:
            return len(os.listdir("/proc/self/task"))
        except OSError:
            return None

    class DlInfo(ctypes.Structure):
        _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                    ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]

    def fusedopt_openmp_runtime(core):
        # dlsym on _core's handle searches _core's own dependencies, so this finds the
        # omp_get_max_threads that _core's calls bind to; dladdr names the file defining it.
        if os.name != "posix":
            return None
        handle = ctypes.CDLL(core.__file__)
        addr = ctypes.cast(handle.omp_get_max_threads, ctypes.c_void_p)
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "dladdr"):
            libc = ctypes.CDLL("libdl.so.2")
        libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(DlInfo)]
        info = DlInfo()
        assert libc.dladdr(addr, ctypes.byref(info)) != 0
        return os.path.realpath(os.fsdecode(info.dli_fname))
    """
)

_IMPORT_ORDER_CHILD = _PRELUDE + textwrap.dedent(
    """
    first = sys.argv[1]
    if first == "torch":
        import torch
        import fusedopt
    else:
        import fusedopt
        import torch
    out = {"openmp": bool(fusedopt._core.openmp_enabled)}

    # 1. fusedopt first does parallel work (threads=2 on a large buffer).
    before = os_threads()
    out["fusedopt_exact"] = adam_is_exact(fusedopt, threads=2)
    after = os_threads()
    out["fusedopt_new_os_threads"] = None if before is None else after - before

    # 2. torch does parallel work (intra-op pool of 2).
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(384, 384, dtype=torch.float64, generator=gen)
    out["torch_matmul_ok"] = bool(np.allclose((a @ a).numpy(), a.numpy() @ a.numpy(), rtol=1e-12, atol=1e-12))
    x = torch.arange(1 << 22, dtype=torch.float64)
    out["torch_elementwise_ok"] = bool(np.array_equal((x * 2.0 + 1.0).numpy(), np.arange(1 << 22) * 2.0 + 1.0))
    out["torch_threads"] = torch.get_num_threads()

    # 3. Interleaved again: fusedopt with an explicit count and with its default (threads=None).
    fusedopt.set_num_threads(2)
    out["fusedopt_exact_again"] = adam_is_exact(fusedopt, threads=2) and adam_is_exact(fusedopt, threads=None)
    out["torch_matmul_again_ok"] = bool(np.allclose((a @ a).numpy(), a.numpy() @ a.numpy(), rtol=1e-12, atol=1e-12))

    # 4. The two thread settings are independent.
    old = fusedopt.set_num_threads(1)
    out["set_returned_old"] = old
    out["after_fusedopt_set_1"] = [fusedopt.get_num_threads(), torch.get_num_threads()]
    torch.set_num_threads(1)
    fusedopt.set_num_threads(2)
    out["after_torch_set_1"] = [fusedopt.get_num_threads(), torch.get_num_threads()]
    out["fusedopt_exact_after_torch_1"] = adam_is_exact(fusedopt, threads=None)
    print(json.dumps(out))
    """
)

_THREADPOOLCTL_CHILD = _PRELUDE + textwrap.dedent(
    """
    if sys.argv[1] == "torch":
        import torch
    import fusedopt
    from threadpoolctl import threadpool_info, threadpool_limits

    runtime = fusedopt_openmp_runtime(fusedopt._core)
    openmp = [i for i in threadpool_info() if i["user_api"] == "openmp"]
    out = {
        "runtime": runtime,
        "openmp_libraries": [os.path.realpath(i["filepath"]) for i in openmp],
        "default": fusedopt.get_num_threads(),
    }
    with threadpool_limits(limits=1, user_api="openmp"):
        out["limited"] = [fusedopt.get_num_threads(), fusedopt._core.omp_max_threads()]
        out["exact_limited"] = adam_is_exact(fusedopt, threads=None)
    out["restored"] = [fusedopt.get_num_threads(), fusedopt._core.omp_max_threads()]
    print(json.dumps(out))
    """
)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_THREAD_LIMIT"):
        env.pop(name, None)
    return env


@functools.lru_cache(maxsize=None)  # one child per scenario, shared by the tests that read it
def _run_child(source: str, *args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        env=_child_env(),
        timeout=240,
    )
    assert proc.returncode == 0, f"child exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_torch
@pytest.mark.parametrize("first", ["torch", "fusedopt"], ids=["torch-then-fusedopt", "fusedopt-then-torch"])
def test_both_import_orders_do_parallel_work(first: str) -> None:
    out = _run_child(_IMPORT_ORDER_CHILD, first)
    assert out["fusedopt_exact"], "fusedopt (threads=2) differs from the reference next to torch"
    assert out["fusedopt_exact_again"], "fusedopt differs from the reference after torch ran in parallel"
    assert out["torch_matmul_ok"] and out["torch_elementwise_ok"] and out["torch_matmul_again_ok"]
    assert out["torch_threads"] == 2
    if out["openmp"] and out["fusedopt_new_os_threads"] is not None:
        # The first parallel region of fusedopt's runtime starts a worker thread.
        assert out["fusedopt_new_os_threads"] >= 1, "fusedopt's threads=2 call started no thread"


@needs_torch
@pytest.mark.parametrize("first", ["torch", "fusedopt"], ids=["torch-then-fusedopt", "fusedopt-then-torch"])
def test_set_num_threads_is_independent_of_torch(first: str) -> None:
    out = _run_child(_IMPORT_ORDER_CHILD, first)
    assert out["set_returned_old"] == 2
    # fusedopt.set_num_threads(1) leaves torch at 2; torch.set_num_threads(1) leaves fusedopt at 2.
    assert out["after_fusedopt_set_1"] == [1, 2]
    assert out["after_torch_set_1"] == [2, 1]
    assert out["fusedopt_exact_after_torch_1"]


def _check_threadpoolctl(out: dict) -> None:
    if out["runtime"] is not None:
        assert out["runtime"] in out["openmp_libraries"], (
            f"threadpoolctl does not list fusedopt's OpenMP runtime {out['runtime']}; it lists {out['openmp_libraries']}"
        )
    else:  # Windows: no dladdr; at least the runtime kind is visible
        assert out["openmp_libraries"], "threadpoolctl lists no OpenMP runtime"
    assert out["limited"] == [1, 1], "threadpool_limits(1) did not limit fusedopt's default thread count"
    assert out["exact_limited"]
    assert out["restored"] == [out["default"], out["default"]]


@needs_openmp
@pytest.mark.skipif(CPUS < 2, reason="one CPU: the default is already 1, a limit of 1 is not visible")
def test_threadpoolctl_lists_and_limits_fusedopt() -> None:
    out = _run_child(_THREADPOOLCTL_CHILD, "fusedopt")
    assert out["default"] >= 2
    _check_threadpoolctl(out)


@needs_torch
@needs_openmp
@pytest.mark.skipif(CPUS < 2, reason="one CPU: the default is already 1, a limit of 1 is not visible")
def test_threadpoolctl_lists_and_limits_fusedopt_after_torch() -> None:
    out = _run_child(_THREADPOOLCTL_CHILD, "torch")
    assert out["default"] >= 2
    _check_threadpoolctl(out)


@needs_openmp
def test_in_process_limit_follows_the_runtime() -> None:
    """The same check in the pytest process itself: the limit is seen at once and undone on exit."""
    from threadpoolctl import threadpool_limits

    if os.environ.get("OMP_NUM_THREADS"):
        pytest.skip("OMP_NUM_THREADS is set: it overrides the runtime's value by design")
    user_setting = fusedopt._threads._user_threads  # restored afterwards (None = the default)
    fusedopt.set_num_threads(None)
    try:
        default = fusedopt.get_num_threads()
        with threadpool_limits(limits=1, user_api="openmp"):
            assert _core.omp_max_threads() == 1
            assert fusedopt.get_num_threads() == 1
        assert fusedopt.get_num_threads() == default
    finally:
        fusedopt.set_num_threads(user_setting)
