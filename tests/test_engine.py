"""The one engine: every layer is derived from the algorithm descriptions (fusedopt.algorithms).

* every description's functional has the description's signature, and its kernel and reference exist;
* the NumPy and torch classes of an algorithm take their state keys and checks from it;
* the kernel-vs-reference grid covers every description (a new algorithm cannot be left out);
* torch parameters in a dense non-C order (channels_last) are stepped in place, with state of the
  same strides, bitwise like the same values in C order.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

import numpy as np
import pytest

import fusedopt
from fusedopt import _core, functional, optimizers, reference
from fusedopt.algorithms import ALGORITHMS, REQUIRED

NUMPY_CLASSES = {
    name: cls
    for name, cls in vars(optimizers).items()
    if isinstance(cls, type) and issubclass(cls, optimizers.Optimizer) and cls is not optimizers.Optimizer
}


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_functional_signature_is_the_descriptions(name: str) -> None:
    algo = ALGORITHMS[name]
    sig = inspect.signature(getattr(functional, name))
    params = list(sig.parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["params", "grads"] + [r.arg for r in algo.states]
    for p, r in zip(params[2:], algo.states):
        assert (p.default is None) == (r.when is not None), r.arg
    keywords = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
    for h in algo.arguments:
        if h.default is REQUIRED:
            assert keywords[h.name] is inspect.Parameter.empty
        else:
            assert keywords[h.name] == h.default, h.name
    assert ("step" in keywords) == algo.step_arg
    assert callable(getattr(_core, algo.kernel)) and callable(algo.reference)
    assert getattr(reference, name) is algo.reference or name == "trace" or algo.reference.__module__.endswith("reference")


@pytest.mark.parametrize("cls_name", sorted(NUMPY_CLASSES))
def test_numpy_class_state_is_the_descriptions(cls_name: str) -> None:
    cls: Any = NUMPY_CLASSES[cls_name]
    assert cls._STATE_ARRAYS == tuple(r.key for r in cls._algo.states)
    assert cls._HAS_STEP == cls._algo.has_step


def test_kernel_grid_covers_every_algorithm() -> None:
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).with_name("test_kernels_vs_reference.py")
    spec = importlib.util.spec_from_file_location("_grid", path)
    assert spec is not None and spec.loader is not None
    grid = importlib.util.module_from_spec(spec)
    sys.modules["_grid"] = grid  # (dataclasses look their module up)
    spec.loader.exec_module(grid)

    covered = {c.algo for c in grid.FLAG_GRID}
    assert set(ALGORITHMS) - {"trace"} <= covered, sorted(set(ALGORITHMS) - covered)


# -- every class steps exactly like its functional form (derived from the descriptions) ------------
def _class_kwargs(cls: Any) -> dict:
    return {"lr": 0.01} if "lr" in inspect.signature(cls).parameters else {}


@pytest.mark.parametrize("cls_name", sorted(NUMPY_CLASSES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_class_steps_like_its_functional(cls_name: str, dtype: Any) -> None:
    cls: Any = NUMPY_CLASSES[cls_name]
    algo = cls._algo
    rng = np.random.default_rng(7)
    shapes = [(5,), (3, 4), (33,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    mine = [p.copy() for p in params]
    opt = cls(params, **_class_kwargs(cls))
    h = opt._group_view(opt.param_groups[0])
    states = [[np.zeros_like(p) for p in mine] if r.present(h) else None for r in algo.states]
    for r, lst in zip(algo.states, states):
        if lst is not None and r.init not in ("zeros", "first_step"):
            for a in lst:
                a.fill(h[r.init] if r.init in h else opt.param_groups[0][r.init])
    fn = getattr(functional, algo.name)
    kw = {x.name: h[x.name] for x in algo.arguments}
    scalar_states = {s.key: s.init for s in algo.scalar_states}  # NAdam's mu_product: kept per parameter
    for t in range(1, 5):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        opt.step(grads)
        call = dict(kw)
        if "first_step" in call:
            call["first_step"] = t == 1
        if algo.step_arg:
            call["step"] = t
        for s in algo.scalar_states:  # the value after this step, as the class advances it
            call[s.key] = scalar_states[s.key] = s.advance(h, t, scalar_states[s.key], "float32")
        fn(mine, grads, *states, **call)
        for a, b in zip(params, mine):
            assert a.tobytes() == b.tobytes(), (cls_name, t)


torch = pytest.importorskip("torch", reason="torch is an optional dependency (pip install fusedopt[torch])")


def _conv_run(make: Any, channels_last: bool, steps: int = 3) -> Any:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(8, 6, 3, 3, generator=gen)
    if channels_last:
        w = w.to(memory_format=torch.channels_last)
    w = torch.nn.Parameter(w)
    opt = make([w])
    grads = [torch.randn(8, 6, 3, 3, generator=gen) for _ in range(steps)]
    for g in grads:
        w.grad = g.to(memory_format=torch.channels_last) if channels_last else g.contiguous()
        opt.step()
    return w.detach(), opt.state[w]


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: fusedopt.torch.Adam(ps, lr=1e-2, weight_decay=0.1, amsgrad=True),
        lambda ps: fusedopt.torch.AdamW(ps, lr=1e-2),
        lambda ps: fusedopt.torch.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True),
        lambda ps: fusedopt.torch.RMSprop(ps, lr=1e-2, centered=True, momentum=0.5),
        lambda ps: fusedopt.torch.Adagrad(ps, lr=1e-2, initial_accumulator_value=0.1),
    ],
    ids=["adam", "adamw", "sgd", "rmsprop", "adagrad"],
)
def test_channels_last_parameters_step_in_place_like_c_order(make: Any) -> None:
    import fusedopt.torch  # noqa: F401

    w_cl, st_cl = _conv_run(make, True)
    w_c, st_c = _conv_run(make, False)
    assert w_cl.is_contiguous(memory_format=torch.channels_last) and not w_cl.is_contiguous()
    assert torch.equal(w_cl, w_c)
    for k, v in st_c.items():
        if k == "step":
            assert torch.equal(st_cl[k], v)
            continue
        assert st_cl[k].stride() == w_cl.stride(), k  # state made with the parameter's strides
        assert torch.equal(st_cl[k], v), k


def test_lion_classes_step_like_the_reference() -> None:
    import fusedopt.torch as ft

    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(40).astype(np.float32)
    ref_p, ref_m = p0.copy(), np.zeros_like(p0)
    p_np = p0.copy()
    opt_np = fusedopt.Lion([p_np], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    w = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt_t = ft.Lion([w], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
    for _ in range(5):
        g = rng.standard_normal(40).astype(np.float32)
        g[::7] = 0.0
        reference.lion(ref_p, g, ref_m, lr=0.01, beta1=0.8, beta2=0.95, weight_decay=0.1)
        opt_np.step([g])
        w.grad = torch.from_numpy(g.copy())
        opt_t.step()
    assert ref_p.tobytes() == p_np.tobytes() == w.detach().numpy().tobytes()
    assert ref_m.tobytes() == opt_np.state[0]["exp_avg"].tobytes() == opt_t.state[w]["exp_avg"].numpy().tobytes()
    assert "step" not in opt_t.state[w]
    sd = opt_t.state_dict()
    twin = ft.Lion([torch.nn.Parameter(w.detach().clone())], lr=0.01)
    twin.load_state_dict(sd)
    assert twin.param_groups[0]["betas"] == (0.8, 0.95)
    with pytest.raises(ValueError, match="Invalid beta parameter at index 1"):
        ft.Lion([w], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match=r"betas\[0\] must be in \[0, 1\)"):
        fusedopt.Lion([p_np], betas=(1.5, 0.9))
