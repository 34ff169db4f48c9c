"""fusedopt.torch's C++ steady-state step (_core.TorchPlan, cpp/bindings/torch_plan.hpp).

The plan must step exactly as the full Python path (bitwise), and anything it cached that changed
must send the step to the full path (which then steps the new tensors, or raises its own error with
nothing written): never a write through a stale pointer.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any, Callable, Dict, List, Tuple

import pytest

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

CONFIGS = [
    ("Adam", {}),
    ("Adam", {"amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"maximize": True}),
    ("SGD", {"lr": 0.1}),
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", {"lr": 0.1, "momentum": 0.5, "dampening": 0.3, "weight_decay": 0.01}),
    ("RMSprop", {}),
    ("RMSprop", {"centered": True, "momentum": 0.5}),
    ("Adagrad", {"lr_decay": 0.01}),
    ("Momentum", {"lr": 0.1, "bias_correction": True}),
    ("Lion", {"weight_decay": 0.1}),
    ("Lamb", {"weight_decay": 0.01, "debias": True}),
    ("LARS", {"lr": 0.1, "weight_decay": 1e-3, "eta": 0.01}),
]


def make_params() -> List[Any]:
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 3, 4, 4), (3,), (7,), (6, 2)]
    ps = []
    for i, s in enumerate(shapes):
        t = torch.randn(s, generator=g, dtype=torch.float64 if i in (1, 5) else torch.float32)
        if len(s) == 4:
            t = t.contiguous(memory_format=torch.channels_last)  # one dense block, not C order
        ps.append(torch.nn.Parameter(t))
    return ps


def grads_for(ps: List[Any], k: int) -> None:
    g = torch.Generator().manual_seed(100 + k)
    for i, p in enumerate(ps):
        if i == 3:
            p.grad = None  # a parameter without gradient: skipped
            continue
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def optimizer(name: str, kw: Dict[str, Any], ps: List[Any]) -> Any:
    groups = [{"params": ps[:4]}, {"params": ps[4:], "lr": 0.05 if name != "Lion" else 1e-3}]
    return getattr(ft, name)(groups, **kw)


def count_full_steps(opt: Any) -> List[int]:
    n = [0]
    real = opt._full_step

    def counting() -> None:
        n[0] += 1
        real()

    opt._full_step = counting
    return n


def snapshot(opt: Any, ps: List[Any]) -> List[Any]:
    out: List[Any] = [p.detach().clone() for p in ps]
    for p in ps:
        st = opt.state.get(p, {})
        out += [(k, v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sorted(st.items())]
    return out


def assert_bitwise(a: List[Any], b: List[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            assert x[0] == y[0]
            x, y = x[1], y[1]
        assert x.dtype == y.dtype and x.shape == y.shape and x.stride() == y.stride()
        assert torch.equal(x, y) or (x.isnan() == y.isnan()).all() and torch.equal(x.nan_to_num(), y.nan_to_num())


def run(name: str, kw: Dict[str, Any], use_plan: bool, steps: int = 6,
        mutate: Callable[[Any, List[Any], int], None] = lambda o, ps, k: None) -> Tuple[List[Any], List[int], Any]:  # fmt: skip
    """`steps` steps with fresh gradients; mutate(opt, params, k) before step k. Returns the final
    parameters and state, the number of full (Python) steps, the optimizer."""
    old = ft._USE_TPLAN
    ft._USE_TPLAN = use_plan
    try:
        ps = make_params()
        opt = optimizer(name, kw, ps)
        full = count_full_steps(opt)
        for k in range(steps):
            grads_for(ps, k)
            mutate(opt, ps, k)
            opt.step()
        return snapshot(opt, ps), full, opt
    finally:
        ft._USE_TPLAN = old


@pytest.mark.parametrize("name,kw", CONFIGS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CONFIGS)])
def test_plan_steps_bitwise_like_the_full_path(name: str, kw: Dict[str, Any]) -> None:
    fast, full_fast, opt = run(name, kw, True)
    slow, full_slow, _ = run(name, kw, False)
    assert_bitwise(fast, slow)
    assert full_fast[0] == 1 and full_slow[0] == 6  # the plan did steps 2..6
    assert opt._tplan is not None and opt._tplan.count == 5  # (the parameter without gradient is not stepped)


def test_plan_follows_torch_optim_with_a_schedule() -> None:
    ps = make_params()
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ours = ft.AdamW(ps, lr=0.01, weight_decay=0.1)
    ref = torch.optim.AdamW(qs, lr=0.01, weight_decay=0.1)
    s1 = torch.optim.lr_scheduler.StepLR(ours, 1, gamma=0.7)
    s2 = torch.optim.lr_scheduler.StepLR(ref, 1, gamma=0.7)
    full = count_full_steps(ours)
    for k in range(8):
        grads_for(ps, k)
        for p, q in zip(ps, qs):
            q.grad = None if p.grad is None else p.grad.clone()
        ours.step()
        ref.step()
        s1.step()
        s2.step()
    assert full[0] == 1  # a new lr each step: validated in Python, given to the plan (refresh)
    for p, q in zip(ps, qs):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        assert ours.state.get(p, {}).get("step") == ref.state.get(q, {}).get("step")


def _set_data(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        ps[0].data = ps[0].data.clone()


def _set_(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        with torch.no_grad():
            ps[4].set_(ps[4].detach().clone())


def _replace_state(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        st = o.state[ps[0]]
        for key, v in list(st.items()):
            if key != "step":
                st[key] = v.clone() + 0.5


def _replace_step(o: Any, ps: List[Any], k: int) -> None:
    if k == 3 and "step" in o.state[ps[1]]:
        o.state[ps[1]]["step"] = torch.tensor(float(o.state[ps[1]]["step"]), dtype=torch.float64)


def _edit_steps(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        for p in ps:
            if "step" in o.state.get(p, {}):
                o.state[p]["step"].fill_(40.0)  # in place: the plan reads the value at every step


def _replace_state_dict(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        o.state[ps[2]] = {key: v.clone() for key, v in o.state[ps[2]].items()}


def _drop_state(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        del o.state[ps[5]]  # made again (lazily) by the full path


def _grad_none(o: Any, ps: List[Any], k: int) -> None:
    if k in (2, 3):
        ps[0].grad = None


def _storage_regrown(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:  # FSDP-style: freed and allocated again (maybe elsewhere), then refilled
        s = ps[1].untyped_storage()
        saved = ps[1].detach().clone()
        n = s.nbytes()
        s.resize_(0)
        s.resize_(n)
        with torch.no_grad():
            ps[1].copy_(saved)


def _add_group(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        extra = torch.nn.Parameter(torch.linspace(-1, 1, 9))
        ps.append(extra)
        o.add_param_group({"params": [extra]})
    if k >= 3:
        ps[-1].grad = torch.full((9,), 0.25)


def _reload(o: Any, ps: List[Any], k: int) -> None:
    if k == 3:
        o.load_state_dict(o.state_dict())


def _lr_edits(o: Any, ps: List[Any], k: int) -> None:
    o.param_groups[1]["lr"] = 0.01 * (k + 1)
    if k == 4:
        o.param_groups[0]["weight_decay"] = 0.2


MUTATIONS = [_set_data, _set_, _replace_state, _replace_step, _edit_steps, _replace_state_dict, _drop_state,
             _grad_none, _storage_regrown, _add_group, _reload, _lr_edits]  # fmt: skip


@pytest.mark.parametrize("mutate", MUTATIONS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize("name,kw", [CONFIGS[1], CONFIGS[4], CONFIGS[7], CONFIGS[8], CONFIGS[10]],
                         ids=["adam", "sgd", "rmsprop", "adagrad", "lion"])  # fmt: skip
def test_anything_changed_is_seen_and_stepped_like_the_full_path(
    name: str, kw: Dict[str, Any], mutate: Callable[[Any, List[Any], int], None]
) -> None:
    fast, full_fast, _ = run(name, kw, True, mutate=mutate)
    slow, _, _ = run(name, kw, False, mutate=mutate)
    assert_bitwise(fast, slow)
    if mutate in (_lr_edits, _edit_steps) or (mutate is _replace_step and name in ("SGD", "Lion")):
        assert full_fast[0] == 1  # new values validated and given to the plan; counts read at every step
    else:
        assert full_fast[0] >= 2  # the full path ran for the changed step


def test_replaced_tensors_are_stepped_and_old_ones_left_alone() -> None:
    ps = [torch.nn.Parameter(torch.ones(8)) for _ in range(2)]
    opt = ft.Adam(ps, lr=0.1)
    for _ in range(2):
        for p in ps:
            p.grad = torch.ones(8)
        opt.step()
    assert opt._tplan is not None
    old_p, old_m = ps[0].data, opt.state[ps[1]]["exp_avg"]
    old_p_copy, old_m_copy = old_p.clone(), old_m.clone()
    ps[0].data = torch.zeros(8)
    opt.state[ps[1]]["exp_avg"] = torch.zeros(8)
    for p in ps:
        p.grad = torch.ones(8)
    opt.step()
    assert torch.equal(old_p, old_p_copy) and torch.equal(old_m, old_m_copy)  # no write through the old pointers
    assert not torch.equal(ps[0].detach(), torch.zeros(8))
    assert not torch.equal(opt.state[ps[1]]["exp_avg"], torch.zeros(8))


@pytest.mark.parametrize("shrink", [0, 16])
def test_storage_shrunk_under_a_planned_parameter_is_refused(shrink: int) -> None:
    p = torch.nn.Parameter(torch.randn(64))
    opt = ft.Adam([p])
    for _ in range(2):
        p.grad = torch.ones(64)
        opt.step()
    assert opt._tplan is not None
    p.untyped_storage().resize_(shrink)  # (ASan: a stale write here would be a heap overflow / use after free)
    p.grad = torch.ones(64)
    state = {k: v.clone() for k, v in opt.state[p].items()}
    with pytest.raises(ValueError, match=rf"params\[0\] needs 256 bytes .* which holds {shrink} bytes"):
        opt.step()
    assert all(torch.equal(v, opt.state[p][k]) for k, v in state.items())


def test_state_shrunk_or_replaced_by_a_smaller_tensor_is_refused() -> None:
    p = torch.nn.Parameter(torch.randn(64))
    opt = ft.Adam([p])
    for _ in range(2):
        p.grad = torch.ones(64)
        opt.step()
    opt.state[p]["exp_avg_sq"].untyped_storage().resize_(8)
    p.grad = torch.ones(64)
    before = p.detach().clone()
    with pytest.raises(ValueError, match=r"state\[params\[0\]\]\['exp_avg_sq'\] needs 256 bytes"):
        opt.step()
    opt.state[p]["exp_avg_sq"] = torch.zeros(10)
    with pytest.raises(ValueError, match=r"state\[params\[0\]\]\['exp_avg_sq'\] has shape \(10,\)"):
        opt.step()
    assert torch.equal(p.detach(), before)


def _error(fn: Callable[[], Any]) -> Tuple[type, str]:
    try:
        fn()
    except Exception as exc:
        return type(exc), str(exc)
    pytest.fail("no exception was raised")


def _stale_grad(p: Any) -> None:  # the parameter shrinks under a gradient of the old shape
    p.grad = torch.ones(p.shape)
    p.data = p.data[:2]


def _other_dtype(p: Any) -> None:  # the parameter becomes float64 (its state stays float32)
    p.data = p.data.double()
    p.grad = torch.ones(p.shape, dtype=torch.float64)


def _set_grad(make: Callable[[Any], Any]) -> Callable[[Any], None]:
    def set_grad(p: Any) -> None:
        p.grad = make(p)

    return set_grad


BAD_GRADS: List[Callable[[Any], None]] = [
    _stale_grad,
    _other_dtype,
    _set_grad(lambda p: torch.ones(p.shape[1], p.shape[0]).t()),  # dense, other strides
    _set_grad(lambda p: torch.ones(p.shape[0], 2 * p.shape[1])[:, ::2]),  # not dense
    _set_grad(lambda p: p.detach()),  # the parameter's own memory
    _set_grad(lambda p: torch.ones(p.shape)._neg_view()),  # a lazily negated view
    _set_grad(lambda p: torch.ones(p.shape).to_sparse()),
]


@pytest.mark.parametrize("k", range(len(BAD_GRADS)))
def test_bad_gradient_after_the_plan_gets_the_full_paths_error(k: int) -> None:
    def attempt(use_plan: bool) -> Tuple[type, str]:
        old = ft._USE_TPLAN
        ft._USE_TPLAN = use_plan
        try:
            p = torch.nn.Parameter(torch.randn(4, 3))
            opt = ft.Adam([p])
            for _ in range(2):
                p.grad = torch.ones(4, 3)
                opt.step()
            assert (opt._tplan is not None) == use_plan
            data = p.data
            before = data.clone()
            BAD_GRADS[k](p)
            err = _error(opt.step)
            assert torch.equal(data, before)  # nothing written
            return err
        finally:
            ft._USE_TPLAN = old

    assert attempt(True) == attempt(False)


def test_version_counters_advance_once_per_planned_step() -> None:
    p = torch.nn.Parameter(torch.randn(5))
    opt = ft.Adam([p], amsgrad=True)
    for _ in range(2):
        p.grad = torch.ones(5)
        opt.step()
    assert opt._tplan is not None
    tensors = [p, *opt.state[p].values()]
    before = [t._version for t in tensors]
    p.grad = torch.ones(5)
    opt.step()
    assert [t._version for t in tensors] == [v + 1 for v in before]
    assert p.grad._version == 0  # (read only)


def test_float32_step_count_saturates_like_torch() -> None:
    def steps(use_plan: bool) -> List[Any]:
        old = ft._USE_TPLAN
        ft._USE_TPLAN = use_plan
        try:
            p = torch.nn.Parameter(torch.ones(4))
            opt = ft.Adam([p])
            p.grad = torch.ones(4)
            opt.step()
            opt.step()
            opt.state[p]["step"].fill_(2.0**24 - 2)
            out = []
            for _ in range(3):
                opt.step()
                out.append((float(opt.state[p]["step"]), p.detach().clone()))
            return out
        finally:
            ft._USE_TPLAN = old

    fast, slow = steps(True), steps(False)
    assert [s for s, _ in fast] == [2.0**24 - 1, 2.0**24, 2.0**24]
    assert all(a == c and torch.equal(b, d) for (a, b), (c, d) in zip(fast, slow))


def test_inference_mode_steps_a_planned_optimizer() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = ft.SGD([p], lr=0.5)
    for _ in range(2):
        p.grad = torch.ones(4)
        opt.step()
    assert opt._tplan is not None
    with torch.inference_mode():
        opt.step()
    assert torch.equal(p.detach(), torch.full((4,), -0.5))


def test_a_cycle_through_the_plan_is_collected() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = ft.Adam([p])
    for _ in range(2):
        p.grad = torch.ones(4)
        opt.step()
    assert opt._tplan is not None
    opt.param_groups[0]["owner"] = opt  # group dict -> optimizer -> plan -> group dict
    ref = weakref.ref(opt)
    del opt
    gc.collect()
    assert ref() is None


def test_a_list_made_immutable_again_is_planned_again() -> None:
    p = torch.nn.Parameter(torch.ones(4))
    opt = ft.Adam([p])
    for _ in range(2):
        p.grad = torch.ones(4)
        opt.step()
    opt.param_groups[0]["betas"] = [0.9, 0.999]
    opt.step()
    assert opt._tplan is None  # a list can be edited in place: read at every step
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    opt.step()
    assert opt._tplan is not None
