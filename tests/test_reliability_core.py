"""Reliability of the native core (issue: reliability round 2): what the GIL no longer protects.

* every array a step touches is kept alive by the call itself (another thread replacing a list
  item while the kernel runs must not free it);
* thread counts are bounded (ValueError naming ``threads``, never an OpenMP abort);
* ``_core.defer_interrupts`` delivers a SIGINT after the block, never inside it;
* step counters passed as ``counters=`` advance in the same call as the update;
* torch tensors are read without NumPy views (their storages stay resizable) and must lie inside
  their storage.

Crash-prone scenarios run in a subprocess with a timeout, so a regression fails instead of
killing or hanging the test run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedopt
from fusedopt import _core

INF = float("inf")


def _run(code: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )  # fmt: skip


# -- 1. arrays kept alive by the call ---------------------------------------------------------


@pytest.mark.parametrize("victim", ["grads", "params", "exp_avgs", "exp_avg_sqs"])
def test_list_item_replaced_by_another_thread_during_a_step_is_kept_alive(victim: str) -> None:
    # 64 MiB arrays are mmap'ed by malloc and unmapped when freed: a kernel still using a freed
    # one faults at once. Another thread drops the only reference while the steps run.
    r = _run(f"""
        import threading, time
        import numpy as np
        import fusedopt
        n = 1 << 24
        lists = {{k: [np.ones(n, np.float32)] for k in ("params", "grads", "exp_avgs", "exp_avg_sqs")}}
        stop = False
        def replace():
            while not stop:
                time.sleep(0.002)
                lists[{victim!r}][0] = np.ones(n, np.float32)   # frees the array being stepped
        t = threading.Thread(target=replace)
        t.start()
        try:
            for step in range(1, 25):
                fusedopt.functional.adam(lists["params"], lists["grads"], lists["exp_avgs"],
                                         lists["exp_avg_sqs"], step=step, threads=1)
        finally:
            stop = True
            t.join()
        print("survived")
    """)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_optimizer_step_keeps_a_replaced_gradient_alive() -> None:
    r = _run("""
        import threading, time
        import numpy as np
        import fusedopt
        n = 1 << 24
        w = [np.ones(n, np.float32), np.ones(n, np.float32)]
        opt = fusedopt.Adam(w, lr=1e-3)
        grads = [np.ones(n, np.float32), np.ones(n, np.float32)]
        opt.step(grads)                      # makes the plan
        stop = False
        def replace():
            while not stop:
                time.sleep(0.002)
                grads[0] = np.ones(n, np.float32)
        t = threading.Thread(target=replace)
        t.start()
        try:
            for _ in range(25):
                opt.step(grads)
        finally:
            stop = True
            t.join()
        print("survived")
    """)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])


# -- 9. bounded thread counts (the native side) -----------------------------------------------


@pytest.mark.parametrize("threads", [0, -1, 1025, 4000, 2**31, 2**63, 2**80])
def test_core_refuses_thread_counts_out_of_range(threads: int) -> None:
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"threads must be between 1 and 1024"):
        _core.sgd([w], [g], None, 0.1, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, threads)
    np.testing.assert_array_equal(w, 1.0)
    with pytest.raises(ValueError, match=r"threads must be between 1 and 1024"):
        _core.sum_of_squares([g], threads)


@pytest.mark.parametrize("threads", [True, 2.0, "2", None])
def test_core_refuses_thread_counts_of_the_wrong_type(threads: object) -> None:
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(TypeError, match=r"threads must be an int"):
        _core.sgd([w], [g], None, 0.1, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, threads)
    np.testing.assert_array_equal(w, 1.0)


def test_core_accepts_the_bound() -> None:
    assert _core.max_threads == 1024
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    _core.sgd([w], [g], None, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 1)
    np.testing.assert_array_equal(w, 0.5)


# -- 7. interrupts deferred; counters committed with the update --------------------------------


def test_defer_interrupts_delivers_sigint_after_the_block() -> None:
    r = _run("""
        import os, signal, time
        from fusedopt import _core
        done = False
        try:
            with _core.defer_interrupts:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)            # the handler would have run by now
                with _core.defer_interrupts:  # nested: still deferred at the inner exit
                    pass
                time.sleep(0.01)
                done = True
            print("not raised")
        except KeyboardInterrupt:
            print("raised after the block" if done else "raised inside the block")
        # no leftover: a block without a signal raises nothing, and SIGINT works normally again
        with _core.defer_interrupts:
            pass
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            print("lost")
        except KeyboardInterrupt:
            print("normal again")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["raised", "after", "the", "block", "normal", "again"], r.stdout


def test_defer_interrupts_leaves_default_and_ignored_handlers_alone() -> None:
    r = _run("""
        import os, signal, time
        from fusedopt import _core
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with _core.defer_interrupts:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.02)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_counters_advance_with_the_update() -> None:
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    states = [{"step": 3}, {"step": 10**30}]
    c32 = np.array([2.0**24], np.float32)
    c64 = np.array([5.0], np.float64)
    _core.sgd([w], [g], None, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 1, None,
              states + [c32, c64])  # fmt: skip
    assert states == [{"step": 4}, {"step": 10**30 + 1}]
    assert c32[0] == np.float32(2.0**24)  # a float32 count saturates there, as torch's
    assert c64[0] == 6.0
    np.testing.assert_array_equal(w, 0.5)


@pytest.mark.parametrize(
    "bad",
    [{"step": 1.0}, {"step": True}, {}, np.zeros(2, np.float32), np.zeros(1, np.int64), "step"],
    ids=["float-step", "bool-step", "no-step", "two-elements", "int64", "str"],
)
def test_bad_counters_are_refused_before_anything_is_written(bad: object) -> None:
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    good = {"step": 1}
    with pytest.raises(TypeError, match=r"counters\[1\]"):
        _core.sgd([w], [g], None, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 1, None, [good, bad])
    np.testing.assert_array_equal(w, 1.0)
    assert good == {"step": 1}


def test_read_only_counter_is_refused() -> None:
    w, g = np.ones(4, np.float32), np.ones(4, np.float32)
    ro = np.zeros(1, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"counters\[0\] must be aligned and writeable"):
        _core.sgd([w], [g], None, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, 1, None, [ro])
    np.testing.assert_array_equal(w, 1.0)
    assert ro[0] == 0.0


# -- torch tensors in the core (10, 11) ---------------------------------------------------------


@pytest.fixture
def torch_core():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    import fusedopt.torch  # noqa: F401  (registers torch's types with the core)

    return torch


def _sgd(p: object, g: object, threads: int = 1) -> None:
    _core.sgd([p], [g], None, 0.5, 0.0, 0.0, 1.0, 1.0, 1.0, INF, False, False, False, threads)


def test_core_steps_torch_tensors_in_place_without_numpy_views(torch_core) -> None:  # type: ignore[no-untyped-def]
    torch = torch_core
    p, g = torch.ones(8), torch.full((8,), 2.0)
    _sgd(p, g)
    assert torch.equal(p, torch.zeros(8))
    # a NumPy view would have made the storages non-resizable (what FSDP needs)
    p.untyped_storage().resize_(0)
    g.untyped_storage().resize_(64)


@pytest.mark.parametrize("case", ["resized_to_zero", "shrunk", "view_past_end"])
def test_core_refuses_tensors_outside_their_storage(torch_core, case: str) -> None:  # type: ignore[no-untyped-def]
    torch = torch_core
    base = torch.ones(100)
    if case == "resized_to_zero":
        p = base
        p.untyped_storage().resize_(0)
    elif case == "shrunk":
        p = base[:10]
        base.untyped_storage().resize_(8)  # 2 floats left under a 10-element view
    else:
        p = base[90:]
        p.untyped_storage().resize_(380)  # 95 floats: the view's last 5 are outside
    g = torch.ones(p.shape)
    with pytest.raises(ValueError, match=r"params\[0\] needs \d+ bytes .* of its storage, which holds"):
        _sgd(p, g)
    with pytest.raises(ValueError, match=r"grads\[0\] needs"):
        _sgd(torch.ones(p.shape), p)


def test_core_torch_error_messages_name_the_argument(torch_core) -> None:  # type: ignore[no-untyped-def]
    torch = torch_core
    p = torch.ones(4)
    cases = [
        (torch.ones(4).to_sparse(), TypeError, r"grads\[0\] has layout torch.sparse_coo"),
        (torch.ones(4, dtype=torch.float16), TypeError, r"grads\[0\] has dtype torch.float16"),
        (torch.ones(8)[::2], ValueError, r"grads\[0\] is not contiguous \(strides \(2,\)\)"),
        (torch.ones(5), ValueError, r"grads\[0\] has shape \(5,\) but params\[0\] has shape \(4,\)"),
        (torch.ones(4, device="meta"), ValueError, r"grads\[0\] is on device 'meta'"),
        (torch._neg_view(torch.ones(4)), ValueError, r"grads\[0\] is a lazily negated view"),
        (p, ValueError, r"grads\[0\] shares memory with params\[0\]"),
    ]
    for g, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            _sgd(p, g)
        assert torch.equal(p, torch.ones(4))


def test_core_keeps_a_replaced_tensor_storage_alive(torch_core) -> None:  # type: ignore[no-untyped-def]
    r = _run("""
        import threading, time
        import torch
        import fusedopt.torch
        from fusedopt import _core
        n = 1 << 24
        p = torch.ones(n)
        grads = [torch.ones(n)]
        stop = False
        def replace():
            while not stop:
                time.sleep(0.002)
                p.data = torch.ones(n)          # frees the storage being stepped
                grads[0] = torch.ones(n)
        t = threading.Thread(target=replace)
        t.start()
        try:
            for _ in range(25):
                _core.sgd([p], grads, None, 1e-3, 0.0, 0.0, 1.0, 1.0, 1.0, float("inf"),
                          False, False, False, 1)
        finally:
            stop = True
            t.join()
        print("survived")
    """)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])


def test_plan_refuses_tensors(torch_core) -> None:  # type: ignore[no-untyped-def]
    torch = torch_core
    with pytest.raises(TypeError, match="a Plan holds numpy arrays only"):
        _core.Plan([[torch.ones(3)]])
    assert fusedopt.__version__
