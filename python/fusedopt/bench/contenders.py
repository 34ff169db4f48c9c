"""The contenders of ``python -m fusedopt.bench``: name -> factory, in display order.

A factory takes ``(spec, arrays, alloc)`` (:class:`~fusedopt.bench.specs.Spec`, ``[param, grad,
*state]``, :class:`~fusedopt.bench.arrays.Allocator`) and returns a
:class:`~fusedopt.bench.runner.Runner` that steps those same arrays, or None when the contender
does not apply (torch not importable, no such torch optimizer, DeepSpeed not importable or not an
Adam-family algorithm). All contenders of one configuration update the same arrays, so they see
the same memory layout and cache state.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional

import numpy as np

from . import ceiling, ds_adam, numpy_peer
from .arrays import Allocator
from .runner import Factory, Runner
from .specs import STEP, Spec

__all__ = ["CONTENDERS", "FACTORIES", "TORCH_MODES", "fusedopt_runner", "torch_mode_kwargs", "torch_module", "torch_runner"]


def fusedopt_runner(threads: Optional[int]) -> Factory:
    """:mod:`fusedopt.functional` with ``threads`` (None: the automatic thread policy)."""

    def make(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Runner:
        fn = spec.functional
        kw = spec.kwargs(STEP)
        kw["threads"] = threads

        def step() -> None:
            fn(*arrays, **kw)

        return Runner(step, "exact")

    return make


def torch_module() -> Any:
    """torch, or None when it is not importable."""
    try:
        import torch
    except ImportError:
        return None
    return torch


#: torch.optim's CPU implementations, by contender suffix: the fused kernel (Adam, AdamW, SGD,
#: Adagrad), the multi-tensor foreach path, and the single-tensor for-loop (torch's CPU default)
TORCH_MODES: Dict[str, Dict[str, bool]] = {"fused": {"fused": True}, "foreach": {"foreach": True},
                                           "forloop": {"foreach": False}}  # fmt: skip


def torch_mode_kwargs(cls: Any, mode: str) -> Optional[Dict[str, bool]]:
    """The constructor arguments selecting implementation ``mode`` of torch.optim class ``cls``, or
    None when the class has no such implementation (no ``fused`` argument: no fused kernel)."""
    kw = TORCH_MODES[mode]
    params = inspect.signature(cls.__init__).parameters
    return kw if all(k in params for k in kw) else None


def torch_runner(mode: str) -> Factory:
    """torch.optim (its class named by the description's ``torch_optim``) with the implementation
    ``mode`` (:data:`TORCH_MODES`), state tensors viewing our arrays where possible (the spec's
    ``torch_state`` keys); fusedopt's EMA Momentum runs as SGD(lr*(1-beta), beta)."""

    def make(spec: Spec, arrays: List[np.ndarray], alloc: Allocator) -> Optional[Runner]:
        torch = torch_module()
        if torch is None:
            return None
        name = spec.name
        cls: Any = torch.optim.SGD if name == "momentum" else getattr(torch.optim, spec.algorithm.torch_optim or "", None)
        kw = None if cls is None else torch_mode_kwargs(cls, mode)
        if kw is None:
            return None  # torch.optim has no such optimizer, or not this implementation of it
        p, g, *st = arrays
        pt = torch.from_numpy(p)
        pt.grad = torch.from_numpy(g)
        h = spec.hyper
        keep: List[Any] = [pt]
        if name == "momentum":
            beta = h["beta"]
            # torch's buffer b holds v / (1 - beta); SGD(lr*(1-beta), beta) then makes the same update
            b = alloc.empty(p.size, p.dtype)
            np.divide(st[0], p.dtype.type(1.0 - beta), out=b)
            opt = cls([pt], lr=h["lr"] * (1.0 - beta), momentum=beta, **kw)
            opt.state[pt] = {"momentum_buffer": torch.from_numpy(b)}
            keep += [b, opt]

            def readback() -> List[np.ndarray]:
                return [p, b * p.dtype.type(1.0 - beta)]

            return Runner(opt.step, "rel", readback=readback, note="SGD(lr=lr*(1-beta), momentum=beta)", keep=keep)
        opt = cls([pt], **h, **kw)  # Adagrad creates its state eagerly: replaced below
        state = opt.state[pt]
        for key, a in zip(spec.torch_state, st):
            state[key] = torch.from_numpy(a)
        if spec.algorithm.has_step:  # (RMSprop counts steps too, unused without schedules)
            state["step"] = torch.tensor(float(STEP - 1), dtype=torch.float32)  # the first step then uses t = STEP
        for s in spec.algorithm.scalar_states:  # NAdam's mu_product: its value before step STEP
            state[s.key] = torch.tensor(spec.kwargs(STEP - 1)[s.key] if STEP > 1 else s.init, dtype=torch.float32)
        keep.append(opt)
        return Runner(opt.step, "rel", keep=keep)

    return make


#: contender name -> factory, in the order of the table's columns
FACTORIES: Dict[str, Factory] = {
    "fusedopt": fusedopt_runner(None),
    "fusedopt-1t": fusedopt_runner(1),
    "numpy-textbook": numpy_peer.textbook,
    "numpy-inplace": numpy_peer.inplace,
    "torch-fused": torch_runner("fused"),
    "torch-foreach": torch_runner("foreach"),
    "torch-forloop": torch_runner("forloop"),
    "deepspeed": ds_adam.raw_op_runner,
    "deepspeed-step": ds_adam.class_step_runner,
    "ceiling": ceiling.ceiling,
    "copy": ceiling.copy,
}

CONTENDERS = tuple(FACTORIES)
