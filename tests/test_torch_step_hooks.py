"""fusedopt.torch's step and torch's step machinery: step hooks (per optimizer and global), the
profiler's ``Optimizer.step#<class>.step`` range and the signature behave as torch.optim's, also
though the step skips torch's wrapper when no hook and no profiler is active."""

from __future__ import annotations

import inspect
from typing import Any, List

import pytest

torch = pytest.importorskip("torch")
import fusedopt.torch as fot  # noqa: E402


def _torch_optimizer() -> Any:
    import importlib

    return importlib.import_module("torch.optim.optimizer")


def _model() -> Any:
    p = torch.nn.Parameter(torch.zeros(8))
    p.grad = torch.ones(8)
    return p


@pytest.mark.parametrize("cls", [fot.Adam, fot.SGD, fot.Lion])
def test_hooks_run_around_the_step_with_torchs_arguments(cls: Any) -> None:
    p, q = _model(), _model()
    ours = cls([p], lr=0.1)
    theirs = getattr(torch.optim, cls.__name__, torch.optim.SGD)([q], lr=0.1) if cls is not fot.Lion else None
    seen: List[Any] = []
    for opt, tag in ((ours, "ours"), (theirs, "torch")):
        if opt is None:
            continue
        opt.register_step_pre_hook(lambda o, a, k, tag=tag: seen.append((tag, "pre", len(a), sorted(k))))
        opt.register_step_post_hook(lambda o, a, k, tag=tag: seen.append((tag, "post", len(a), sorted(k))))
        opt.step()
        opt.step(lambda: 1.0)
        assert opt.step(closure=lambda: 2.0) == 2.0
    mine = [s[1:] for s in seen if s[0] == "ours"]
    assert mine == [("pre", 1, []), ("post", 1, []), ("pre", 2, []), ("post", 2, []),
                    ("pre", 1, ["closure"]), ("post", 1, ["closure"])]  # fmt: skip
    if theirs is not None:
        assert mine == [s[1:] for s in seen if s[0] == "torch"]
    assert float(ours.state[p].get("step", torch.tensor(3.0))) == 3.0


def test_a_pre_hook_may_replace_the_arguments_and_global_hooks_run() -> None:
    p = _model()
    opt = fot.Adam([p], lr=0.1)
    calls: List[str] = []
    opt.register_step_pre_hook(lambda o, a, k: (a, {"closure": lambda: calls.append("closure") or 5.0}))
    h1 = _torch_optimizer().register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre"))
    h2 = _torch_optimizer().register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post"))
    try:
        assert opt.step() == 5.0
    finally:
        h1.remove()
        h2.remove()
    assert calls == ["global pre", "closure", "global post"]
    opt.register_step_pre_hook(lambda o, a, k: "not a tuple")
    with pytest.raises(RuntimeError, match="must return None or a tuple"):
        opt.step()


def test_the_profiler_sees_torchs_step_range() -> None:
    p = _model()
    opt = fot.Adam([p], lr=0.1)
    opt.step()
    with torch.profiler.profile() as prof:
        opt.step()
    assert "Optimizer.step#Adam.step" in [e.name for e in prof.events()]
    assert float(opt.state[p]["step"]) == 2.0


def test_signature_and_no_second_wrapper() -> None:
    p = _model()
    opt = fot.AdamW([p], lr=0.1)
    assert str(inspect.signature(opt.step)) == "(closure: 'Optional[Callable[[], Any]]' = None) -> 'Any'"
    assert type(opt).step is fot._FusedOptimizer.step  # torch did not wrap it again
