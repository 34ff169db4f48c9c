"""fusedopt.torch reliability (issue 11, items 4, 5, 12, 16, 17, 18), checked against torch.optim.

Where torch.optim defines the behaviour (an exception type and message, a KeyError, the value an
edited hyperparameter has at the next step), the same thing is run on ``torch.optim.X`` and
``fusedopt.torch.X`` and compared. Where torch accepts what fusedopt refuses (a state dict whose
``'step'`` is ``-5`` or ``nan``: torch steps garbage), fusedopt's refusal is checked, and that
nothing was loaded or modified.
"""

from __future__ import annotations

import copy
import functools
import io
import pickle
import subprocess
import sys
import textwrap
import threading
import warnings
from typing import Any, Callable, Dict, List, Tuple

import pytest

torch = pytest.importorskip("torch", reason="torch not installed: pip install 'fusedopt[torch]'")

import fusedopt.torch as ft  # noqa: E402

T = torch.tensor
F64 = torch.float64


def error_of(fn: Callable[[], Any]) -> Tuple[type, str]:
    """(type, str) of the exception ``fn`` raises; fails the test if it raises none."""
    try:
        fn()
    except Exception as exc:  # any exception is the result compared
        return type(exc), str(exc)
    pytest.fail("no exception was raised")


def params(n: int = 2, seed: int = 0) -> List[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(5 + k, generator=g, dtype=F64)) for k in range(n)]


def set_grads(ps: List[torch.Tensor], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)


def snapshot(opt: torch.optim.Optimizer) -> List[Any]:
    """Every parameter, state entry and hyperparameter of ``opt``, copied."""
    out: List[Any] = []
    for group in opt.param_groups:
        out.append({k: copy.deepcopy(v) for k, v in group.items() if k != "params"})
        for p in group["params"]:
            out.append(p.detach().clone())
            out.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in opt.state.get(p, {}).items()})
    return out


def same(x: Any, y: Any) -> bool:
    if torch.is_tensor(x):
        return torch.is_tensor(y) and x.dtype == y.dtype and torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0)) \
            and torch.equal(x.isnan(), y.isnan())  # fmt: skip
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(v, y[k]) for k, v in x.items())
    return bool(x == y)


def assert_same(a: List[Any], b: List[Any]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert same(x, y), (x, y)


# ------------------------------------------------------------------------------------------------
# items 4, 12, 16: damaged state dicts are refused at load_state_dict, with nothing loaded
# ------------------------------------------------------------------------------------------------
def stepped(make: Callable[[List[torch.nn.Parameter]], torch.optim.Optimizer], steps: int = 2,
            seed: int = 0) -> Tuple[torch.optim.Optimizer, List[torch.nn.Parameter]]:  # fmt: skip
    ps = params(seed=seed)
    opt = make(ps)
    for k in range(steps):
        set_grads(ps, k)
        opt.step()
    return opt, ps


def assert_nothing_loaded(opt: torch.optim.Optimizer, ps: List[torch.nn.Parameter], make: Callable[..., Any],
                          bad: Dict[str, Any]) -> Tuple[type, str]:  # fmt: skip
    """Load ``bad`` into ``opt`` (it must raise); nothing changed, and the next steps are those of
    an optimizer that never saw ``bad``."""
    before, groups, state = snapshot(opt), opt.param_groups, opt.state
    err = error_of(lambda: opt.load_state_dict(bad))
    assert opt.param_groups is groups and opt.state is state
    assert_same(snapshot(opt), before)
    ref, ref_ps = stepped(make)
    for k in (7, 8):
        set_grads(ps, k)
        set_grads(ref_ps, k)
        opt.step()
        ref.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, ref_ps))
    return err


def adam(ps: List[torch.nn.Parameter]) -> Any:
    return ft.Adam(ps, lr=0.01)


@pytest.mark.parametrize(
    "step, exc, match",
    [
        pytest.param(T(-5.0), ValueError, "whole number of steps >= 0, got -5.0", id="negative"),
        pytest.param(T(2.5), ValueError, "whole number of steps >= 0, got 2.5", id="fractional"),
        pytest.param(T(float("inf")), ValueError, "finite number of steps, got inf", id="inf"),
        pytest.param(T(float("nan")), ValueError, "finite number of steps, got nan", id="nan"),
        pytest.param(T(3, dtype=torch.int64), TypeError, "one-element float32/float64 tensor", id="int64-tensor"),
        pytest.param(T([2.0, 2.0]), TypeError, "one-element float32/float64 tensor", id="two-elements"),
        pytest.param(-5, ValueError, "whole number of steps >= 0", id="python-int"),
        pytest.param(10**400, ValueError, "finite number of steps", id="10**400"),
        pytest.param("2", TypeError, "number of steps", id="string"),
        pytest.param(None, TypeError, "number of steps", id="None"),
    ],
)
def test_load_refuses_a_bad_step_count_and_loads_nothing(step, exc, match):
    opt, ps = stepped(adam)
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][1]["step"] = step  # the second parameter: the first one's state is fine
    err_type, msg = assert_nothing_loaded(opt, ps, adam, bad)
    assert err_type is exc and match in msg and "state[params[1]]['step']" in msg, msg


def test_load_refuses_a_bad_step_count_in_every_stepping_class():
    for name, kw in [("RMSprop", {}), ("Adagrad", {}), ("Momentum", {"lr": 0.1})]:
        make = functools.partial(getattr(ft, name), **kw)
        opt, ps = stepped(make)
        bad = copy.deepcopy(opt.state_dict())
        bad["state"][0]["step"] = T(float("nan"))
        err_type, msg = assert_nothing_loaded(opt, ps, make, bad)
        assert err_type is ValueError and "state[params[0]]['step']" in msg, (name, msg)


#: (class, constructor keywords, what the damaged state dict lacks): torch.optim raises KeyError
#: (at load_state_dict for 'step', at its next step for the rest); fusedopt at load_state_dict
MISSING = [
    ("Adam", {}, ("state", "exp_avg")),
    ("Adam", {}, ("state", "exp_avg_sq")),
    ("Adam", {}, ("state", "step")),
    ("Adam", {"amsgrad": True}, ("state", "max_exp_avg_sq")),
    ("AdamW", {}, ("state", "exp_avg")),
    ("Adam", {}, ("group", "lr")),
    ("Adam", {}, ("group", "betas")),
    ("Adam", {}, ("group", "eps")),
    ("RMSprop", {"momentum": 0.9, "centered": True}, ("state", "square_avg")),
    ("RMSprop", {"momentum": 0.9, "centered": True}, ("state", "momentum_buffer")),
    ("RMSprop", {"momentum": 0.9, "centered": True}, ("state", "grad_avg")),
    ("RMSprop", {}, ("state", "step")),
    ("RMSprop", {}, ("group", "alpha")),
    ("Adagrad", {}, ("state", "sum")),
    ("Adagrad", {}, ("state", "step")),
    ("Adagrad", {}, ("group", "lr_decay")),
    ("SGD", {"momentum": 0.9}, ("group", "lr")),
    ("SGD", {"momentum": 0.9}, ("group", "dampening")),
]


def damaged(sd: Dict[str, Any], what: Tuple[str, str]) -> Dict[str, Any]:
    sd = copy.deepcopy(sd)
    where, key = what
    if where == "state":
        del sd["state"][1][key]
    else:
        del sd["param_groups"][0][key]
    return sd


@pytest.mark.parametrize("name, kw, what", MISSING, ids=[f"{n}-{w[0]}-{w[1]}" for n, _, w in MISSING])
def test_a_state_dict_missing_a_key_is_refused_like_torch(name, kw, what):
    kw = {"lr": 0.01, **kw}
    # torch.optim: the same KeyError, when it loads or at its next step
    t_opt, t_ps = stepped(lambda p: getattr(torch.optim, name)(p, **kw))
    t_bad = damaged(t_opt.state_dict(), what)
    t_new = getattr(torch.optim, name)(params(), **kw)

    def torch_load_and_step() -> None:
        t_new.load_state_dict(t_bad)
        set_grads(t_new.param_groups[0]["params"], 9)
        t_new.step()

    expected = error_of(torch_load_and_step)
    assert expected[0] is KeyError
    # fusedopt.torch: refused by load_state_dict itself, nothing loaded
    make = lambda p: getattr(ft, name)(p, **kw)  # noqa: E731
    opt, ps = stepped(make)
    assert assert_nothing_loaded(opt, ps, make, damaged(opt.state_dict(), what)) == expected


def test_momentum_state_dict_missing_a_key_is_refused():
    make = lambda p: ft.Momentum(p, lr=0.1, bias_correction=True)  # noqa: E731
    for what in [("state", "velocity"), ("state", "step"), ("group", "beta")]:
        opt, ps = stepped(make)
        assert assert_nothing_loaded(opt, ps, make, damaged(opt.state_dict(), what)) == (KeyError, repr(what[1]))


def test_keys_torch_fills_in_may_be_missing_and_sgd_may_lack_its_buffer():
    """Not refused, as in torch: group keys torch's __setstate__ defaults, an SGD momentum buffer
    (restarted from the gradient), a huge whole step count. A required group key still is."""
    for name, kw, drop in [("Adam", {}, ["amsgrad", "foreach", "maximize", "fused", "decoupled_weight_decay"]),
                           ("Adagrad", {}, ["initial_accumulator_value", "foreach"]),
                           ("RMSprop", {}, ["momentum", "centered"]),
                           ("SGD", {"momentum": 0.9}, ["nesterov", "maximize"])]:  # fmt: skip
        sds = []
        for mod in (torch.optim, ft):
            opt, ps = stepped(functools.partial(getattr(mod, name), lr=0.01, **kw))
            sd = copy.deepcopy(opt.state_dict())
            for k in drop:
                del sd["param_groups"][0][k]
            if name == "SGD":
                del sd["state"][0]["momentum_buffer"]
            opt.load_state_dict(sd)
            set_grads(ps, 5)
            opt.step()
            sds.append([p.detach().clone() for p in ps])
        assert all(torch.allclose(a, b, rtol=1e-12, atol=0) for a, b in zip(*sds)), name
    opt, ps = stepped(adam)  # a huge but whole step count loads (a float64 counter holds it)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["step"] = T(1e308, dtype=F64)
    opt.load_state_dict(sd)
    assert float(opt.state[ps[1]]["step"]) == 1e308
    opt, ps = stepped(lambda p: ft.SGD(p, lr=0.01, momentum=0.9))
    bad = copy.deepcopy(opt.state_dict())
    del bad["state"][0]["momentum_buffer"]
    del bad["param_groups"][0]["momentum"]
    assert error_of(lambda: opt.load_state_dict(bad)) == (KeyError, "'momentum'")


def test_unpickling_checks_the_state_too():
    opt, ps = stepped(adam)
    opt.state[ps[1]]["step"] = T(-3.0)
    blob = pickle.dumps(opt)
    with pytest.raises(ValueError, match=r"state\[params\[1\]\]\['step'\]"):
        pickle.loads(blob)


# ------------------------------------------------------------------------------------------------
# items 4, 5: an edited hyperparameter takes effect, and is validated, at the next step
# ------------------------------------------------------------------------------------------------
def run_both(name: str, kw: Dict[str, Any], edits: List[Callable[[Dict[str, Any]], None]]) -> List[List[torch.Tensor]]:
    """The same steps on torch.optim.X and fusedopt.torch.X, ``edits[k]`` applied to param group 0
    before step k+1; the parameters of each after the last step."""
    out = []
    for mod in (torch.optim, ft):
        ps = params()
        opt = getattr(mod, name)(ps, **kw)
        set_grads(ps, 0)
        opt.step()
        for k, edit in enumerate(edits):
            edit(opt.param_groups[0])
            set_grads(ps, k + 1)
            opt.step()
        out.append([p.detach().clone() for p in ps])
    return out


def assert_params_close(a: List[torch.Tensor], b: List[torch.Tensor]) -> None:
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-15), float((x - y).abs().max())


def test_in_place_edit_of_betas_takes_effect_like_torch():
    def as_list(g: Dict[str, Any]) -> None:
        g["betas"] = [0.9, 0.99]

    def edit_in_place(g: Dict[str, Any]) -> None:
        g["betas"][0] = 0.0  # the list object stays the same

    ours_torch = run_both("Adam", {"lr": 0.1}, [as_list, edit_in_place, lambda g: None])
    assert_params_close(*ours_torch)


def test_in_place_edit_of_a_list_hyperparameter_of_every_class_takes_effect():
    """A list value (betas) edited in place is read at the next step;
    lr as a 0-dim tensor edited in place too (torch reads it at every step)."""

    def tensor_lr(g: Dict[str, Any]) -> None:
        g["lr"] = T(0.1, dtype=F64)

    def edit_lr(g: Dict[str, Any]) -> None:
        g["lr"].fill_(0.01)

    for name, kw in [("SGD", {"lr": 0.1, "momentum": 0.9}), ("RMSprop", {}), ("Adagrad", {}), ("AdamW", {})]:
        assert_params_close(*run_both(name, kw, [tensor_lr, edit_lr]))
    assert_params_close(*run_both("AdamW", {}, [lambda g: g.update(betas=[0.5, 0.9]),
                                                lambda g: g["betas"].__setitem__(1, 0.5)]))  # fmt: skip


def two_groups() -> Tuple[torch.optim.Optimizer, List[torch.nn.Parameter]]:
    ps = params(3)
    opt = ft.Adam([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}], lr=0.01)
    set_grads(ps, 0)
    opt.step()
    return opt, ps


def test_invalid_in_place_edit_is_refused_before_any_group_is_written():
    opt, ps = two_groups()
    opt.param_groups[1]["betas"] = [0.9, 0.99]
    set_grads(ps, 1)
    opt.step()
    opt.param_groups[1]["betas"][0] = 1.5  # invalid, in place
    set_grads(ps, 2)
    before = snapshot(opt)
    # torch's message for this value (its constructor's check; its step would use 1.5)
    expected = error_of(lambda: torch.optim.Adam(params(), betas=(1.5, 0.99)))
    assert error_of(opt.step) == expected == (ValueError, "Invalid beta parameter at index 0: 1.5")
    assert_same(snapshot(opt), before)  # group 0 was not stepped either


def test_a_value_equal_to_the_cached_one_but_of_another_type_is_validated():
    opt, ps = two_groups()
    opt.param_groups[1]["amsgrad"] = 0  # == False, but not a bool
    set_grads(ps, 1)
    before = snapshot(opt)
    with pytest.raises(TypeError, match="amsgrad must be a bool, got int"):
        opt.step()
    assert_same(snapshot(opt), before)


# ------------------------------------------------------------------------------------------------
# item 16: clear errors naming the argument
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SGD", "RMSprop", "Adam", "AdamW", "Adagrad"])
def test_a_multi_element_tensor_lr_set_after_a_step_is_named(name):
    expected = error_of(lambda: getattr(torch.optim, name)(params(), lr=T([0.1, 0.2])))
    opt, ps = stepped(lambda p: getattr(ft, name)(p, lr=0.1))
    opt.param_groups[0]["lr"] = T([0.1, 0.2])
    set_grads(ps, 3)
    before = snapshot(opt)
    assert error_of(opt.step) == expected == (ValueError, "Tensor lr must be 1-element")
    assert_same(snapshot(opt), before)


# ------------------------------------------------------------------------------------------------
# item 18: torch's checks, exception types and messages
# ------------------------------------------------------------------------------------------------
#: constructor calls torch.optim refuses; fusedopt.torch must raise the same type and message
REFUSED = [
    ("SGD", dict(lr=-1.0)),
    ("SGD", dict(lr=-1)),
    ("SGD", dict(lr=T(-1.0))),
    ("SGD", dict(lr=T([-1.0]))),
    ("SGD", dict(lr=T([0.1, 0.2]))),
    ("SGD", dict(lr=0.1, momentum=-0.5)),
    ("SGD", dict(lr=0.1, weight_decay=-1e-3)),
    ("SGD", dict(lr=0.1, weight_decay=T(-1.0))),
    ("SGD", dict(lr=-1.0, momentum=-1.0)),
    ("SGD", dict(lr=0.1, fused=True, differentiable=True)),
    ("RMSprop", dict(lr=-1.0)),
    ("RMSprop", dict(lr=float("nan"))),
    ("RMSprop", dict(eps=-1.0)),
    ("RMSprop", dict(momentum=-1.0)),
    ("RMSprop", dict(weight_decay=-1.0)),
    ("RMSprop", dict(alpha=-1.0)),
    ("RMSprop", dict(alpha=-1.0, eps=-1.0)),
    ("RMSprop", dict(lr=T([1.0, 2.0]))),
    ("Adam", dict(lr=-1.0)),
    ("Adam", dict(lr=float("nan"))),
    ("Adam", dict(eps=-1.0)),
    ("Adam", dict(betas=(-0.1, 0.9))),
    ("Adam", dict(betas=(0.9, 1.0))),
    ("Adam", dict(betas=(1, 0.9))),
    ("Adam", dict(betas=(T(1.5), T(0.99)))),
    ("Adam", dict(betas=(0.9, T(0.99)))),
    ("Adam", dict(betas=(T(0.9), 0.99))),
    ("Adam", dict(betas=(0.9, 0))),
    ("Adam", dict(betas=(T(0.9), T(0.99)), foreach=True)),
    ("Adam", dict(lr=T(0.1), foreach=True)),
    ("Adam", dict(lr=T([0.1, 0.2]))),
    ("Adam", dict(weight_decay=-1.0)),
    ("Adam", dict(lr=-1.0, eps=-1.0, weight_decay=-1.0)),
    ("Adam", dict(eps=-1.0, betas=(2.0, 0.9))),
    ("Adam", dict(fused=True, differentiable=True)),
    ("AdamW", dict(lr=-1.0)),
    ("AdamW", dict(betas=(0.9, T(0.99)))),
    ("AdamW", dict(weight_decay=-1.0)),
    ("Adagrad", dict(lr=-1.0)),
    ("Adagrad", dict(lr_decay=-1.0)),
    ("Adagrad", dict(weight_decay=-1.0)),
    ("Adagrad", dict(initial_accumulator_value=-1.0)),
    ("Adagrad", dict(eps=-1.0)),
    ("Adagrad", dict(lr=T([1.0, 2.0]))),
    ("Adagrad", dict(lr=0.1, fused=True, differentiable=True)),
]


@pytest.mark.parametrize("name, kw", REFUSED, ids=[f"{n}-{kw}" for n, kw in REFUSED])
def test_constructor_errors_are_torchs(name, kw):
    expected = error_of(lambda: getattr(torch.optim, name)(params(), **kw))
    assert error_of(lambda: getattr(ft, name)(params(), **kw)) == expected


#: (class, hyperparameter, invalid value): torch's constructor message, whether fusedopt refuses
#: the value at construction, in add_param_group or at the step after it was set
LATE = [
    ("SGD", "lr", -0.5), ("SGD", "momentum", -1), ("SGD", "weight_decay", -1e-3),
    ("RMSprop", "eps", -1.0), ("RMSprop", "alpha", -0.5), ("RMSprop", "momentum", -1.0),
    ("Adam", "lr", T(-2.0)), ("Adam", "betas", (0.9, 1.5)), ("Adam", "eps", -1e-8), ("AdamW", "weight_decay", -1.0),
    ("Adagrad", "lr_decay", -1.0), ("Adagrad", "initial_accumulator_value", -1.0), ("Adagrad", "eps", -1.0),
]  # fmt: skip


@pytest.mark.parametrize("name, key, value", LATE, ids=[f"{n}-{k}" for n, k, _ in LATE])
def test_add_param_group_and_step_errors_are_torchs_constructor_errors(name, key, value):
    base = {"lr": 0.1} if name == "SGD" else {}
    expected = error_of(lambda: getattr(torch.optim, name)(params(), **{**base, key: value}))
    opt, ps = stepped(lambda p: getattr(ft, name)(p, **base))
    extra = torch.nn.Parameter(torch.zeros(3, dtype=F64))
    assert error_of(lambda: opt.add_param_group({"params": [extra], key: value})) == expected
    assert len(opt.param_groups) == 1
    opt.param_groups[0][key] = value
    set_grads(ps, 4)
    before = snapshot(opt)
    assert error_of(opt.step) == expected
    assert_same(snapshot(opt), before)


def test_tensor_lr_with_foreach_set_after_construction_is_refused_at_the_step_like_torch():
    results = []
    for mod in (torch.optim, ft):
        opt, ps = stepped(functools.partial(mod.Adam, foreach=True))
        opt.param_groups[0]["lr"] = T(0.01)
        set_grads(ps, 4)
        before = snapshot(opt)
        results.append(error_of(opt.step))
        if mod is ft:
            assert_same(snapshot(opt), before)
    assert results[1] == results[0] == (RuntimeError, "lr as a Tensor is not supported for capturable=False and foreach=True")


def test_momentum_messages_are_in_torchs_style():
    for kw, msg in [(dict(lr=-1.0), "Invalid learning rate: -1.0"), (dict(lr=0.1, beta=1.5), "Invalid beta value: 1.5"),
                    (dict(lr=0.1, weight_decay=-2), "Invalid weight_decay value: -2")]:  # fmt: skip
        assert error_of(functools.partial(ft.Momentum, params(), **kw)) == (ValueError, msg)


def test_a_parameter_listed_twice_is_refused_and_the_message_says_why():
    p, q = params()
    with warnings.catch_warnings(record=True) as caught:  # torch only warns
        warnings.simplefilter("always")
        torch.optim.Adam([p, q, p])
    assert any("duplicate parameters" in str(w.message) for w in caught)
    msg = "params[2] is the same tensor as params[0]: a parameter may be listed only once (a fused step would update it twice)"
    assert error_of(lambda: ft.Adam([p, q, p])) == (ValueError, msg)
    assert "listed twice" in (ft.Adam.__doc__ or "") + (ft.__doc__ or "")
    # in two groups: torch's own check and message
    expected = error_of(lambda: torch.optim.SGD([{"params": [p]}, {"params": [q, p]}], lr=0.1))
    assert error_of(lambda: ft.SGD([{"params": [p]}, {"params": [q, p]}], lr=0.1)) == expected


# ------------------------------------------------------------------------------------------------
# item 17: concurrent steps of one optimizer are serialized
# ------------------------------------------------------------------------------------------------
def test_eight_threads_stepping_one_optimizer_lose_no_update():
    """Large enough that each step's native call (which releases the GIL) overlaps others'."""
    threads, steps, n = 8, 12, 1 << 17
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, generator=g, dtype=F64))
    ref = torch.nn.Parameter(p.detach().clone())
    p.grad = torch.randn(n, generator=g, dtype=F64)
    ref.grad = p.grad.clone()
    opt = ft.Adam([p], lr=1e-3)
    barrier = threading.Barrier(threads)
    errors: List[BaseException] = []

    def work() -> None:
        try:
            barrier.wait(timeout=30)
            for _ in range(steps):
                opt.step()
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=work, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in pool)
    r = ft.Adam([ref], lr=1e-3)
    for _ in range(threads * steps):
        r.step()
    assert float(opt.state[p]["step"]) == threads * steps
    assert torch.equal(p, ref) and torch.equal(opt.state[p]["exp_avg_sq"], r.state[ref]["exp_avg_sq"])


def test_the_lock_keeps_pickle_deepcopy_and_torchs_hooks_working():
    """A guard, not a regression test (all this worked before the lock existed, and must with it)."""
    opt, ps = stepped(adam)
    calls: List[str] = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    opt.register_state_dict_post_hook(lambda o, sd: calls.append("sd"))
    inside, release = threading.Event(), threading.Event()
    busy = threading.Thread(target=opt.step, args=(lambda: (inside.set(), release.wait(30)),), daemon=True)
    for clone in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        cps = clone.param_groups[0]["params"]
        for a, b in zip(ps, cps):
            b.grad = a.grad.clone()
        if not busy.is_alive():  # the original is inside step(): a copy has a lock of its own
            busy.start()
            assert inside.wait(30)
        stepper = threading.Thread(target=clone.step, daemon=True)
        stepper.start()
        stepper.join(timeout=30)
        assert not stepper.is_alive() and float(clone.state[cps[0]]["step"]) == 3
    release.set()
    busy.join(timeout=30)
    assert not busy.is_alive() and float(opt.state[ps[0]]["step"]) == 3
    calls.clear()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt.step()
    assert calls == ["sd", "pre", "post"]
    # a load_state_dict post-hook may step (the lock is re-entrant: no self-deadlock)
    opt.register_load_state_dict_post_hook(lambda o: o.step())
    done = threading.Thread(target=lambda: opt.load_state_dict(torch.load(buf)), daemon=True)
    done.start()
    done.join(timeout=30)
    assert not done.is_alive() and float(opt.state[ps[0]]["step"]) == 4


FORK_CHILD = textwrap.dedent(
    """
    import os, threading, torch
    import fusedopt.torch as ft
    p = torch.nn.Parameter(torch.zeros(4)); p.grad = torch.ones(4)
    opt = ft.Adam([p])
    inside, release = threading.Event(), threading.Event()
    def closure():
        inside.set()
        release.wait(30)
    t = threading.Thread(target=opt.step, args=(closure,))
    t.start()
    inside.wait(30)
    pid = os.fork()  # another thread is inside opt.step()
    if pid == 0:
        try:
            opt.step()
            code = 3  # stepped over a step that never finishes in this process
        except RuntimeError as exc:
            code = 0 if "forked" in str(exc) else 4
        if code == 0:  # loading a state dict recovers
            opt.load_state_dict(opt.state_dict())
            opt.step()
            code = 0 if float(opt.state[p]["step"]) == 1 else 5
        os._exit(code)
    release.set()
    t.join()
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), "parent", float(opt.state[p]["step"]))
    """
)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_child_forked_while_another_thread_steps_raises_instead_of_hanging():
    out = subprocess.run([sys.executable, "-c", FORK_CHILD], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["child", "0", "parent", "1.0"], out.stdout + out.stderr
