"""DeepSpeed's CPU Adam as an optional contender (never a dependency, never in CI).

Two contenders, float32 Adam/AdamW only (the op steps float32 parameters with float32 state):

``deepspeed``       the raw op: DeepSpeed's ``cpu_adam`` extension (``CPUAdamBuilder().load()``),
                    ``create_adam`` once, then ``adam_update`` per step on ``torch.from_numpy``
                    views of the benchmark's own arrays, with ``bias_correction=True`` and
                    ``adamw_mode`` for AdamW;
``deepspeed-step``  ``deepspeed.ops.adam.DeepSpeedCPUAdam(...).step()`` on one parameter
                    (the class's per-call Python work included).

The op is compiled by DeepSpeed on first use (about a minute; later runs load the cached build).
:func:`load` does that once, before anything is timed, and records how long it took; the bench
prints it in its header. When DeepSpeed is not importable, or the op does not build, :func:`load`
returns None and :func:`status` says why. Setup: ``pip install deepspeed ninja py-cpuinfo`` and run
with ``DS_ACCELERATOR=cpu`` (set here when unset, before DeepSpeed is imported, so that it does
not look for a GPU).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import itertools
import os
import sys
import time
import weakref
from typing import Any, Dict, List, Optional

import numpy as np

from .arrays import Allocator
from .runner import Runner
from .specs import STEP, Spec

__all__ = ["ALGORITHMS", "adam_class", "class_step_runner", "load", "raw_op_runner", "status"]

#: the algorithms DeepSpeed's CPU Adam implements (AdamW: ``adamw_mode=True``)
ALGORITHMS = ("adam", "adamw")

_state: Dict[str, Any] = {}
#: optimizer ids of the raw-op contenders (DeepSpeedCPUAdam counts its own from 0)
_ids = itertools.count(1 << 20)


def _import() -> Any:
    """Import deepspeed (with DS_ACCELERATOR=cpu unless set), or record why not and return None."""
    if "module" in _state:
        return _state["module"]
    _state["module"] = None
    if importlib.util.find_spec("deepspeed") is None:
        _state["reason"] = "deepspeed is not installed (pip install deepspeed ninja py-cpuinfo; run with DS_ACCELERATOR=cpu)"
        return None
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        with contextlib.redirect_stdout(sys.stderr):
            ds = importlib.import_module("deepspeed")
            importlib.import_module("deepspeed.ops.op_builder")
    except Exception as exc:  # any failure of an optional contender is a reason to skip it
        _state["reason"] = f"import deepspeed failed: {type(exc).__name__}: {exc}"
        return None
    _state["module"] = ds
    _state["version"] = getattr(ds, "__version__", "?")
    return ds


def load() -> Any:
    """DeepSpeed's compiled ``cpu_adam`` op, built (first use) or loaded once per process, or None.

    The first call compiles or loads the op and records the seconds in ``status()["op_load_s"]``;
    call it before timing anything."""
    if "op" in _state:
        return _state["op"]
    _state["op"] = None
    if _import() is None:
        return None
    try:
        builder = importlib.import_module("deepspeed.ops.op_builder").CPUAdamBuilder()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            op = builder.load()
        _state["op_load_s"] = time.perf_counter() - t0
    except Exception as exc:
        _state["reason"] = f"DeepSpeed's cpu_adam op did not build/load: {type(exc).__name__}: {exc}"
        return None
    _state["op"] = op
    return op


def status() -> Dict[str, Any]:
    """What is known so far: ``version``, ``op_load_s`` (seconds of the first load, compilation
    included when it compiled), or ``reason`` (why DeepSpeed is skipped)."""
    return {k: _state[k] for k in ("version", "op_load_s", "reason") if k in _state}


def adam_class() -> Any:
    """``deepspeed.ops.adam.DeepSpeedCPUAdam``, or None (after :func:`load`; see :func:`status`)."""
    if load() is None:
        return None
    return importlib.import_module("deepspeed.ops.adam").DeepSpeedCPUAdam


def _applies(spec: Spec, arrays: List[np.ndarray]) -> bool:
    return spec.name in ALGORITHMS and arrays[0].dtype == np.float32


def _hyper(spec: Spec) -> Dict[str, Any]:
    h = spec.hyperparameters()
    return {"lr": float(h["lr"]), "beta1": float(h["beta1"]), "beta2": float(h["beta2"]), "eps": float(h["eps"]),
            "weight_decay": float(h["weight_decay"]), "adamw_mode": spec.name == "adamw"}  # fmt: skip


def raw_op_runner(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Optional[Runner]:
    """``adam_update`` of the raw op on views of the arrays (None: not Adam float32, or no DeepSpeed)."""
    if not _applies(spec, arrays):
        return None
    op = load()
    if op is None:
        return None
    import torch

    h = _hyper(spec)
    lr, b1, b2, eps, wd = h["lr"], h["beta1"], h["beta2"], h["eps"], h["weight_decay"]
    opt_id = next(_ids)
    op.create_adam(opt_id, lr, b1, b2, eps, wd, h["adamw_mode"], False)
    p, g, m, v = (torch.from_numpy(a) for a in arrays)
    update = op.adam_update

    def step() -> None:
        update(opt_id, STEP, lr, b1, b2, eps, wd, True, p, g, m, v)

    runner = Runner(step, "norm", keep=[p, g, m, v])
    weakref.finalize(runner, op.destroy_adam, opt_id)
    return runner


def class_step_runner(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Optional[Runner]:
    """``DeepSpeedCPUAdam.step()`` on one parameter viewing the arrays (state: views of m and v)."""
    if not _applies(spec, arrays):
        return None
    cls = adam_class()
    if cls is None:
        return None
    import torch

    h = _hyper(spec)
    p, g, m, v = (torch.from_numpy(a) for a in arrays)
    pt = torch.nn.Parameter(p, requires_grad=False)
    pt.grad = g
    with contextlib.redirect_stdout(sys.stderr):
        opt = cls([pt], lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"], weight_decay=h["weight_decay"],
                  bias_correction=True, adamw_mode=h["adamw_mode"])  # fmt: skip
    # the class counts its steps itself (an int); its first step here is step STEP
    opt.state[pt] = {"step": STEP - 1, "exp_avg": m, "exp_avg_sq": v}
    return Runner(opt.step, "norm", keep=[pt, g, m, v, opt])
