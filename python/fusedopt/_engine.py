"""The engine: the functional API and the native call, derived from the algorithm descriptions.

:func:`make_functional` writes one Python function per description (as :mod:`dataclasses`
writes ``__init__``): its signature is the description's (state arrays positional in role
order, hyperparameters keyword-only with their defaults), its body checks every argument with
the description's ranges, derives the per-step scalars and makes one native call. Generating
the code keeps the call as cheap as a hand-written function (no loops over hyperparameters at
run time) while no check, role order or native call is written per algorithm. The function is
then wrapped in its C++ fast path (:func:`fast_functional`, cpp/bindings/functional.cpp): the
plain call (exact floats in range, bools, no gradient options) is parsed, checked, derived and
run in C++; every other call runs the generated function unchanged.

:func:`native_call` is the same call for the optimizer classes (validated hyperparameters
already at hand).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _core, _scalars, _threads
from . import _validation as check
from .algorithms import REQUIRED, Algorithm
from .algorithms._spec import Hypers

#: the gradient pre-processing keywords every functional takes (documented in fusedopt.functional)
GRAD_OPTIONS = ("grad_scale", "found_inf", "clip_value", "max_grad_norm", "clip_coef", "skip_if_nonfinite")
#: the low-precision keywords every functional takes, with their defaults (fusedopt.functional)
LOWP_OPTIONS = (("masters", None), ("stochastic_rounding", False), ("seed", 0), ("sr_step", None), ("absmax", None))

_NO_GRAD = _scalars.NO_GRAD_TRANSFORM


def _range_test(name: str, rng: Any) -> str:
    """A Python expression true when ``name`` (a float) is inside ``rng``."""
    low = repr(float(rng.low))
    high = "_inf" if rng.high == math.inf else repr(float(rng.high))
    lo_op = "<" if rng.open_low else "<="
    hi_op = "<=" if rng.closed_high else "<"
    if rng.high == math.inf and not rng.closed_high:
        return f"{low} {lo_op} {name} < _inf"
    return f"{low} {lo_op} {name} {hi_op} {high}"


def make_functional(algo: Algorithm, module: str = "fusedopt.functional") -> Callable[..., Optional[float]]:
    """The functional form of ``algo`` (see the module docstring): the generated Python function,
    wrapped in its C++ fast path (:func:`fast_functional`) when the kernel's traits have twins for it."""
    fn = python_functional(algo, module)
    key = algo.name if algo.name in _core._functional_traits else algo.kernel
    if key not in _core._functional_traits:
        return fn
    return fast_functional(algo, key, fn)


def fast_functional(algo: Algorithm, key: str, fn: Callable[..., Optional[float]]) -> Callable[..., Optional[float]]:
    """``fn`` (the generated function of ``algo``) behind the C++ fast path (cpp/bindings/functional.cpp):
    a :class:`fusedopt._core.Functional` that parses the call itself and, for the plain case (exact
    floats inside their ranges, bools, an int step, no gradient options, arrays that pass every
    check), derives the scalars and runs the kernel in C++; any other call runs ``fn`` with the
    same arguments (so every error and conversion is ``fn``'s). It looks like ``fn`` to ``inspect``,
    ``help`` and ``pickle`` (``__wrapped__``, ``__signature__``, ``__doc__``, names)."""
    positional = [("params", False), ("grads", False)] + [(r.arg, r.when is not None) for r in algo.states]
    keywords: List[Tuple[Any, ...]] = [("step", "step", None)] if algo.step_arg else []
    for h in algo.arguments:
        default = None if h.default is REQUIRED else h.default
        if h.is_flag:
            keywords.append((h.name, "flag", default))
        else:
            rng = h.rng
            assert rng is not None
            keywords.append((h.name, "real", default, float(rng.low), float(rng.high), rng.open_low, rng.closed_high))
    keywords += [(o, "none", None) for o in GRAD_OPTIONS if o != "skip_if_nonfinite"]
    keywords += [("skip_if_nonfinite", "false", False), ("threads", "threads", None)]
    # the low-precision options: any value but the default runs ``fn`` (which passes them on)
    keywords += [("masters", "none", None), ("stochastic_rounding", "false", False), ("sr_step", "none", None),
                 ("absmax", "none", None)]
    fast: Any = _core._functional(key, algo.kernel, fn, positional, keywords, list(algo.fixed), _threads, algo.threads)
    for attr in ("__module__", "__name__", "__qualname__", "__doc__", "__source__"):
        setattr(fast, attr, getattr(fn, attr))
    fast.__wrapped__ = fn
    fast.__signature__ = inspect.signature(fn)
    out: Callable[..., Optional[float]] = fast
    return out


def python_functional(algo: Algorithm, module: str = "fusedopt.functional") -> Callable[..., Optional[float]]:
    """The generated Python function of ``algo`` (every check, the scalars, one native call)."""
    ns: Dict[str, Any] = {
        "_core": _core, "_inf": math.inf, "_threads": _threads, "_NO_GRAD": _NO_GRAD, "_algo": algo,
        "_step_count": check.step_count, "_scalars_of": algo.scalars, "_flags_of": algo.flags,
        "_relations": algo.relations, "_check_params": algo.check_params,
    }  # fmt: skip
    from . import functional as F  # the shared helpers (_as_list, _grad_transform, ...)

    ns.update(_as_list=F._as_list, _n_elements=F._n_elements, _grad_transform=F._grad_transform,
              _lowp_args=F._lowp_args)  # fmt: skip
    args: List[str] = ["params", "grads"]
    for r in algo.states:
        args.append(r.arg if r.when is None else f"{r.arg}=None")
    kw: List[str] = []
    if algo.step_arg:
        kw.append("step")
    body: List[str] = []
    if algo.step_arg:
        body.append('t = _step_count("step", step)')
    else:
        body.append("t = 1")
    for h in algo.arguments:
        d = f"_d_{h.name}"
        ns[d] = h.default
        ns[f"_h_{h.name}"] = h
        kw.append(h.name if h.default is REQUIRED else f"{h.name}={d}")
        if h.is_flag:
            body.append(f"if {h.name} is not True and {h.name} is not False: {h.name} = _h_{h.name}.check({h.name})")
        else:
            test = _range_test(h.name, h.rng)
            body.append(f"if {h.name}.__class__ is not float or not ({test}): {h.name} = _h_{h.name}.check({h.name})")
    kw += [f"{o}=None" for o in GRAD_OPTIONS if o != "skip_if_nonfinite"] + ["skip_if_nonfinite=False", "threads=None"]
    kw += [f"{o}={d!r}" for o, d in LOWP_OPTIONS]
    items = [f"{h.name!r}: {h.name}" for h in algo.arguments] + [f"{k!r}: {v!r}" for k, v in algo.fixed]
    body.append("h = {" + ", ".join(items) + "}")
    body.append("_relations(h)")
    body.append('p = _as_list("params", params)')
    body.append('g = _as_list("grads", grads)')
    lists: List[str] = []
    for i, r in enumerate(algo.states):
        v = f"s{i}"
        lists.append(v)
        if r.when is None:
            body.append(f'{v} = _as_list("{r.arg}", {r.arg})')
        else:
            ns[f"_role{i}"] = r
            body.append(f"if _role{i}.when(h):")
            body.append(f"    if {r.arg} is None: raise ValueError('{r.arg} is required when {r.when_text}')")
            body.append(f'    {v} = _as_list("{r.arg}", {r.arg})')
            body.append("else:")
            body.append(f"    {v} = None")
    body.append("_check_params(h, p)")
    body.append("sc = _scalars_of(h, t)")
    body.append("if masters is None and stochastic_rounding is False and sr_step is None and seed.__class__ is int "
                "and seed == 0 and absmax is None:")
    body.append("    lw = ()")
    body.append("else:")
    body.append(f"    lw = _lowp_args(masters, stochastic_rounding, seed, sr_step, {'t' if algo.step_arg else 'None'}, "
                f"{algo.name!r}, absmax)")
    call_lists = ", ".join(["p", "g"] + lists)
    threads_expr = f"_threads.resolve(threads, _n_elements(p), {algo.threads!r})"
    body.append(
        "if grad_scale is None and found_inf is None and clip_value is None and max_grad_norm is None "
        "and clip_coef is None and skip_if_nonfinite is False:"
    )
    body.append(f"    _core.{algo.kernel}({call_lists}, *sc, *_NO_GRAD, *_flags_of(h), {threads_expr}, *lw)")
    body.append("    return None")
    roles = ", ".join(["('params', p, True)", "('grads', g, False)"] + [f"({r.arg!r}, s{i}, True)"
                                                                          for i, r in enumerate(algo.states)])  # fmt: skip
    body.append(f"gs, norm, skip = _grad_transform(threads, {algo.threads!r}, [{roles}], grad_scale, found_inf, "
                "clip_value, max_grad_norm, clip_coef, skip_if_nonfinite, lw)")  # fmt: skip
    body.append("if skip: return norm")
    body.append(f"_core.{algo.kernel}({call_lists}, *sc, *gs, *_flags_of(h), {threads_expr}, *lw)")
    body.append("return norm")
    src = f"def {algo.name}({', '.join(args)}, *, {', '.join(kw)}):\n" + "".join(f"    {b}\n" for b in body)
    exec(compile(src, f"<fusedopt.functional.{algo.name}>", "exec"), ns)
    fn: Callable[..., Optional[float]] = ns[algo.name]
    fn.__module__ = module
    fn.__qualname__ = algo.name
    fn.__doc__ = functional_doc(algo)
    fn.__source__ = src  # type: ignore[attr-defined]  # for readers: the generated code
    return fn


def functional_doc(algo: Algorithm) -> str:
    """The functional's docstring: the description's math and conventions, then every argument."""
    lines = [algo.doc.strip(), "", "Args:", "    params, grads: parameters (updated) and gradients (read only)."]
    for r in algo.states:
        when = f"; required when {r.when_text}, else ignored" if r.when is not None else ""
        lines.append(f"    {r.arg}: the ``{r.key}`` state arrays (updated{when}).")
    if algo.step_arg:
        lines.append("    step: :math:`t \\ge 1`, this step's number (the count after incrementing).")
    for h in algo.arguments:
        default = "required" if h.default is REQUIRED else f"default ``{h.default!r}``"
        rng = "a bool" if h.rng is None else f"{h.rng.text()}"
        conv = " Convention of another framework." if h.convention else ""
        lines.append(f"    {h.name}: {h.doc or h.name} ({rng}; {default}).{conv}")
    lines.append("    grad_scale, found_inf, clip_value, max_grad_norm, clip_coef, skip_if_nonfinite: gradient")
    lines.append("        pre-processing fused into the pass (see the :mod:`fusedopt.functional` docstring).")
    lines.append("    threads: thread count (None: :func:`fusedopt.get_num_threads`, or 1 for small calls).")
    lines.append("    masters, stochastic_rounding, seed, sr_step, absmax: low-precision storage (see the")
    lines.append("        :mod:`fusedopt.functional` docstring).")
    lines += ["", "Returns:", "    The global norm of the unscaled gradients when it was computed (``max_grad_norm`` or",
              "    ``skip_if_nonfinite``), else ``None``."]  # fmt: skip
    return "\n".join(lines)


def native_call(algo: Algorithm, h: Hypers, t: int, params: Sequence[Any], grads: Sequence[Any],
                lists: Sequence[Optional[Sequence[Any]]], threads: int, plan: Any = None, counters: Any = None,
                grad: Sequence[float] = _NO_GRAD, lowp: Sequence[Any] = (), **split: Any) -> None:  # fmt: skip
    """One native step of ``algo`` with validated functional hyperparameters ``h``, step number
    ``t`` and the state lists in role order (None for an absent role); ``lowp`` is empty or
    ``(masters, stochastic_rounding, seed, sr_step[, absmax])`` (the binding's trailing arguments);
    ``split``: the binding's ``sr_offsets=`` and ``trust=`` (pieces of parameters:
    fusedopt.distributed)."""
    getattr(_core, algo.kernel)(params, grads, *lists, *algo.scalars(h, t), *grad, *algo.flags(h), threads, plan,
                                counters, *lowp, **split)  # fmt: skip
