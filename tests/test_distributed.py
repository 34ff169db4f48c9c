"""fusedopt.distributed: ZeRO-1 sharding over torch.distributed (gloo), real processes on loopback.

The multi-process worlds run once per session in one helper process (tests/zero_worker.py: it
imports torch once and forks each world, with deadlines and a group timeout, so nothing can
hang); the tests compare what every rank ended with against single-process fusedopt runs here,
bitwise. A few checks that need no peers (bad input) run in this process on a world of one.
"""

from __future__ import annotations

import datetime
import importlib.util
import math
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import fusedopt.functional as F  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt.distributed import ZeroOptimizer, consolidate_state_dicts  # noqa: E402

WORKER = Path(__file__).with_name("zero_worker.py")
_spec = importlib.util.spec_from_file_location("zero_worker", WORKER)
assert _spec is not None and _spec.loader is not None
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)
_lspec = importlib.util.spec_from_file_location("zero_launch", Path(__file__).with_name("zero_launch.py"))
assert _lspec is not None and _lspec.loader is not None
L = importlib.util.module_from_spec(_lspec)
_lspec.loader.exec_module(L)

WORLDS = ["w2", "w3", "w1", "dead", "hang"]
#: the whole helper run (every world has its own, shorter deadline inside)
TOTAL_TIMEOUT = 600


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    res: Dict[str, Any] = L.collect(WORKER, tmp_path_factory.mktemp("zero"), W.WORLDS, WORLDS, TOTAL_TIMEOUT)
    return res


def _ranks_ok(res: Dict[str, Any], sc: str, n: int = 0) -> List[Dict[str, Any]]:
    ranks = res[sc][: n or None]
    for r, d in enumerate(ranks):
        assert d is not None, f"{sc}: rank {r} wrote no result ({res[sc + '_exit']})"
        assert "error" not in d, f"{sc} rank {r}:\n{d['error']}"
    return ranks


def _equal(got: List[np.ndarray], want: List[np.ndarray]) -> bool:
    return len(got) == len(want) and all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want))


# -- single-process references (the same averaged gradients A) ----------------------------------
_REF: Dict[str, List[np.ndarray]] = {}


def _reference_elementwise(seed: int, name: str, kw: Dict[str, Any], dt: str) -> List[np.ndarray]:
    key = f"{seed}-{name}-{kw}-{dt}"
    if key not in _REF:
        ps = [torch.from_numpy(a).requires_grad_() for a in W.init_params(W.SHAPES, dt)]
        opt = getattr(ft, name)(ps, **kw)
        for t in range(1, W.STEPS + 1):
            for p, g in zip(ps, W.grads_for(seed, t, W.SHAPES, dt, 1, 0)[0]):
                p.grad = torch.from_numpy(g)
            opt.step()
        _REF[key] = [p.detach().numpy().copy() for p in ps]
    return _REF[key]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_algorithm_is_bitwise_the_single_process(worlds: Dict[str, Any], world: int) -> None:
    ranks = _ranks_ok(worlds, f"elementwise{world}")
    cases = ranks[0]["cases"]
    names = {c[1] for c in cases}
    assert {"SGD", "Momentum", "RMSprop", "Adam", "AdamW", "Adagrad", "Adamax", "RAdam", "NAdam", "Lion", "Lamb",
            "LARS"} <= names
    assert {c[3] for c in cases} == {"float32", "float64"}
    for seed, (cid, name, kw, dt) in enumerate(cases):
        want = _reference_elementwise(seed, name, kw, dt)
        for r, d in enumerate(ranks):
            assert _equal(d["params"][cid], want), f"{cid}: rank {r} of {world} differs from the single process"


def test_every_registry_class_is_sharded(worlds: Dict[str, Any]) -> None:
    assert _ranks_ok(worlds, "elementwise2")[0]["refused"] == {}


def test_the_10000_element_parameter_is_split_over_ranks() -> None:
    """(The layout the trust-ratio and stochastic-rounding cases rely on.)"""
    from fusedopt.distributed._shard import make_buckets

    for world, owners in ((2, {0, 1}), (3, {0, 1, 2})):
        bk = make_buckets([[(i, s, np.float32) for i, s in enumerate(W.SHAPES)]], world)[0]
        k = W.SHAPES.index((100, 100))
        first, last = bk.offsets[k], bk.offsets[k] + bk.sizes[k] - 1
        assert set(range(first // bk.shard, last // bk.shard + 1)) == owners


def _clip_reference() -> "tuple[List[np.ndarray], List[float]]":
    """Two groups, float32 and float64 parameters, AdamW with max_grad_norm=5 and clip_value=0.9:
    the NumPy classes' single-process rule (one norm over every gradient, float32 sum first)."""
    dts = ["float32", "float64", "float32", "float64"]
    ps = [W.init_params([s], d, seed=k)[0] for k, (s, d) in enumerate(zip(W.SHAPES, dts))]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    groups = [([0, 1], dict(lr=W.LR, weight_decay=1e-2)), ([2, 3], dict(lr=0.02, weight_decay=0.1))]
    norms = []
    for t in range(1, W.STEPS + 1):
        g = [W.grads_for(100 + k, t, [s], d, 1, 0)[0][0] for k, (s, d) in enumerate(zip(W.SHAPES, dts))]
        norm = F.global_norm(g)
        norms.append(norm)
        coef = F.clip_coef(norm, 5.0)
        for idx, hp in groups:
            for i in idx:  # (one dtype per call, as a single process's per-(group, dtype) calls)
                F.adamw([ps[i]], [g[i]], [m[i]], [v[i]], step=t, clip_coef=coef, clip_value=0.9, **hp)
    return ps, norms


@pytest.mark.parametrize("world", [1, 2, 3])
def test_global_norm_clipping_is_the_single_process_clip(worlds: Dict[str, Any], world: int) -> None:
    want, norms = _clip_reference()
    assert min(norms) > 5.0  # the clip is active at every step
    for r, d in enumerate(_ranks_ok(worlds, f"options{world}")):
        assert d["clip_norms"] == norms, f"rank {r}: the global norm is not bitwise the single process's"
        assert _equal(d["clip_params"], want), f"rank {r} of {world}"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_nonfinite_gradient_or_found_inf_on_one_rank_skips_on_every_rank(worlds: Dict[str, Any], world: int) -> None:
    ps = [torch.from_numpy(a).requires_grad_() for a in W.init_params(W.SHAPES, "float32")]
    opt = ft.Adam(ps, lr=W.LR)
    for t in range(1, W.STEPS + 1):
        if t in (5, 9):
            continue
        for p, g in zip(ps, W.grads_for(200, t, W.SHAPES, "float32", 1, 0)[0]):
            p.grad = torch.from_numpy(g)
        opt.step()
    want = [p.detach().numpy() for p in ps]
    for r, d in enumerate(_ranks_ok(worlds, f"options{world}")):
        assert d["skipped"] == 2, f"rank {r}"
        assert _equal(d["skip_params"], want), f"rank {r} of {world}"
        assert d["threads"] >= 1


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ddp_mode_and_numpy_route(worlds: Dict[str, Any], world: int) -> None:
    def run(seed: int, dt: str) -> List[np.ndarray]:
        ps = W.init_params(W.SHAPES, dt)
        m = [np.zeros_like(p) for p in ps]
        v = [np.zeros_like(p) for p in ps]
        for t in range(1, W.STEPS + 1):
            g = W.grads_for(seed, t, W.SHAPES, dt, 1, 0)[0]
            F.adamw(ps, g, m, v, step=t, lr=W.LR, max_grad_norm=5.0)
        return ps

    ddp, numpy_route = run(400, "float32"), run(500, "float64")
    for r, d in enumerate(_ranks_ok(worlds, f"options{world}")):
        assert _equal(d["ddp_params"], ddp), f"reduce_grads=False: rank {r} of {world}"
        assert _equal(d["numpy_params"], numpy_route), f"ShardedOptimizer: rank {r} of {world}"


@pytest.mark.parametrize("world", [1, 2, 3])
def test_trust_ratios_in_ddp_mode_and_on_the_numpy_route(worlds: Dict[str, Any], world: int) -> None:
    ps = W.init_params(W.SHAPES, "float32")
    m, v = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    for t in range(1, W.STEPS + 1):  # (fusedopt.torch.Lamb: torch_optimizer's form)
        F.lamb(ps, W.grads_for(410, t, W.SHAPES, "float32", 1, 0)[0], m, v, step=t, lr=W.LR, weight_decay=0.01,
               bias_correction=False, clamp_value=10.0, max_grad_norm=5.0)  # fmt: skip
    qs = W.init_params(W.SHAPES, "float64")
    mu = [np.zeros_like(q) for q in qs]
    for t in range(1, W.STEPS + 1):
        F.lars(qs, W.grads_for(510, t, W.SHAPES, "float64", 1, 0)[0], mu, lr=0.1, momentum=0.9, weight_decay=1e-4,
               max_grad_norm=5.0)  # fmt: skip
    for r, d in enumerate(_ranks_ok(worlds, f"options{world}")):
        assert _equal(d["lamb_ddp_params"], ps), f"Lamb, reduce_grads=False: rank {r} of {world}"
        assert _equal(d["numpy_lars_params"], qs), f"ShardedOptimizer lars: rank {r} of {world}"


def test_checkpoint_saved_on_2_resumes_on_3_and_on_1(worlds: Dict[str, Any]) -> None:
    save = _ranks_ok(worlds, "save2")
    assert "not been consolidated" in save[1]["AdamW_not_consolidated"]
    for name in W.CKPT:
        cls, kw, dt = W._ckpt_model(name)
        final = save[0][f"{name}_final"]
        assert _equal(save[1][f"{name}_final"], final)
        sd = save[0][f"{name}_sd"]
        # the offline tool gives the same state dict from the two ranks' shards
        off = consolidate_state_dicts([save[1][f"{name}_shard"], save[0][f"{name}_shard"]])
        assert off["param_groups"] == sd["param_groups"] and off["state"].keys() == sd["state"].keys()
        for i, st in sd["state"].items():
            assert st.keys() == off["state"][i].keys()
            assert all(torch.equal(st[k], off["state"][i][k]) for k in st)
        for sc in ("resume3", "resume1"):
            for r, d in enumerate(_ranks_ok(worlds, sc)):
                assert _equal(d[f"{name}_final"], final), f"{name}: {sc} rank {r} differs from the uninterrupted run"
        # a single-process fusedopt optimizer loads it and continues bitwise
        ps = [torch.from_numpy(a.copy()).requires_grad_() for a in save[0][f"{name}_at10"]]
        opt = getattr(ft, cls)(ps, **kw)
        opt.load_state_dict(pickle.loads(pickle.dumps(sd)))
        for t in range(11, W.STEPS + 1):
            for p, g in zip(ps, W.grads_for(300, t, W.SHAPES, dt, 1, 0)[0]):
                p.grad = torch.from_numpy(g)
            opt.step()
        assert _equal([p.detach().numpy() for p in ps], final), name
        # and torch.optim's optimizer of the same algorithm loads it
        if not hasattr(torch.optim, cls):  # (LAMB: torch.optim has none)
            continue
        tps = [torch.from_numpy(a.copy()).requires_grad_() for a in save[0][f"{name}_at10"]]
        topt = getattr(torch.optim, cls)(tps, **kw)
        topt.load_state_dict(pickle.loads(pickle.dumps(sd)))
        assert {k for st in topt.state.values() for k in st} == {k for st in sd["state"].values() for k in st}


def _lowp_reference(seed: int, name: str, kw: Dict[str, Any], dt: str, zkw: Dict[str, Any]) -> Dict[str, Any]:
    """The single process on the averaged gradients: fusedopt.torch's class with master weights
    (its state dict after 10 steps, its parameters after 20), or with ``max_grad_norm`` the
    functional form over the same bfloat16 arrays and float32 masters (the global norm of the
    bfloat16 gradients' exact float32 values)."""
    if "max_grad_norm" in zkw:
        import ml_dtypes

        ps = [p.float().numpy().astype(ml_dtypes.bfloat16) for p in W.lowp_params(dt)]
        ms = [p.astype(np.float32) for p in ps]
        m = [np.zeros(p.shape, np.float32) for p in ps]
        v = [np.zeros(p.shape, np.float32) for p in ps]
        for t in range(1, W.STEPS + 1):
            g = [x.float().numpy().astype(ml_dtypes.bfloat16) for x in W.lowp_grads(600 + seed, t, dt, 1, 0)[0]]
            F.adamw(ps, g, m, v, step=t, lr=kw["lr"], weight_decay=0.01, masters=ms, max_grad_norm=zkw["max_grad_norm"])
        return {"final": [p.astype(np.float32) for p in ps], "sd": None}
    ps = [p.requires_grad_() for p in W.lowp_params(dt)]
    opt = getattr(ft, name)(ps, **kw)
    sd = None
    for t in range(1, W.STEPS + 1):
        if t == 11:
            sd = pickle.loads(pickle.dumps(opt.state_dict()))
        for p, g in zip(ps, W.lowp_grads(600 + seed, t, dt, 1, 0)[0]):
            p.grad = g
        opt.step()
    return {"final": [p.detach().float().numpy() for p in ps], "sd": sd}


@pytest.mark.parametrize("world", [1, 2, 3])
def test_lowp_parameters_and_states_are_bitwise_the_single_process(worlds: Dict[str, Any], world: int) -> None:
    ranks = _ranks_ok(worlds, f"lowp{world}")
    for seed, (cid, name, kw, dt, zkw) in enumerate(W.LOWP_CASES):
        want = _lowp_reference(seed, name, kw, dt, zkw)
        for r, d in enumerate(ranks):
            assert _equal(d[f"{cid}_final"], want["final"]), f"{cid}: rank {r} of {world} differs from the single process"
            if world != 2:  # resumed at step 10 from the 2-rank world's consolidated state dict
                assert _equal(d[f"{cid}_resumed"], want["final"]), f"{cid}: resumed rank {r} of {world}"
        sd = ranks[0][f"{cid}_sd"]
        if want["sd"] is not None:  # the consolidated state dict is the single process's, masters included
            ref = want["sd"]
            assert sd["state"].keys() == ref["state"].keys(), cid
            for i, st in ref["state"].items():
                master = {"fp32": "master_param", "split": "master_trail"}.get(kw.get("master_weights"))
                assert master is None or master in st, (cid, i, st.keys())
                assert st.keys() == sd["state"][i].keys(), (cid, i, st.keys(), sd["state"][i].keys())
                for k, v in st.items():
                    assert v.dtype == sd["state"][i][k].dtype and torch.equal(v, sd["state"][i][k]), (cid, i, k)
        # each rank keeps the master and states of its shard only
        n = sum(math.prod(s) for s in W.SHAPES)
        master = {"fp32": 4, "split": 2}.get(kw.get("master_weights"), 0)
        state = 2 if kw.get("state_dtype") == "bfloat16" or (dt != "float32" and not master) else 4
        if kw.get("state_dtype") == "8bit":
            state = 1 + 4 / 256  # (a code and a block's absmax)
        per = master + state * (1 if name in ("Lion", "Adagrad") else 2)  # (AdamW, Adam, RMSprop with momentum: two)
        for r, d in enumerate(ranks):
            assert d[f"{cid}_bytes"] <= per * n / world + per * 2048 * len(W.SHAPES), (cid, r, d[f"{cid}_bytes"])


def test_a_dead_rank_or_a_timeout_raises_in_bounded_time(worlds: Dict[str, Any]) -> None:
    dead = _ranks_ok(worlds, "dead2", 1)[0]
    assert dead["raised"] is not None and dead["seconds"] < 30, dead
    hang = _ranks_ok(worlds, "hang2", 1)[0]
    assert hang["raised"] is not None and 2.0 < hang["seconds"] < 30, hang  # the optimizer's 3 s timeout


# -- one process (a world of one, in this process): bad input, schedulers, DDP mode -----------------
@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Any:
    store = tmp_path_factory.mktemp("store") / "s"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))  # fmt: skip
    yield dist.group.WORLD
    dist.destroy_process_group()


def _model(dtype: Any = torch.float32) -> List[Any]:
    return [torch.from_numpy(a).to(dtype).requires_grad_() for a in W.init_params(W.SHAPES, "float64")]


def _snapshot(opt: Any, ps: List[Any]) -> Any:
    return ([p.detach().clone() for p in ps], [{k: v.copy() for k, v in s.items()} for s in opt._engine.states],
            list(opt._engine.counts))  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    return (all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[2] == b[2]
            and all(s.keys() == t.keys() and all(np.array_equal(s[k], t[k]) for k in s) for s, t in zip(a[1], b[1])))  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(optimizer_class=ft.LARS, lr=0.1, weight_decay_filter=True), ValueError, "weight_decay_filter"),
        (dict(optimizer_class=ft.LARS, lr=0.1, lars_adaptation_filter=True), ValueError, "lars_adaptation_filter"),
        (dict(optimizer_class=ft.Muon), ValueError, "2D"),  # (a whole-parameter mode: 1-D parameters refused by Muon)
        (dict(optimizer_class=torch.optim.AdamW), TypeError, "optimizer_class"),
        (dict(lr=-1.0), ValueError, "Invalid learning rate"),
        (dict(betas=(0.9, 1.5)), ValueError, "beta"),
        (dict(threads=0), ValueError, "threads"),
        (dict(max_grad_norm=-1.0), ValueError, "max_grad_norm"),
        (dict(clip_value=-1.0), ValueError, "clip_value"),
        (dict(timeout=5), TypeError, "timeout"),
        (dict(reduce_grads="yes"), TypeError, "reduce_grads"),
        (dict(state_dtype="8bit"), ValueError, "min_8bit_size"),  # (a 7-element parameter: float32 states)
    ],
)
def test_bad_constructor_arguments_raise_naming_them(group: Any, kwargs: Dict[str, Any], exc: Any, match: str) -> None:
    ps = _model()
    before = [p.detach().clone() for p in ps]
    with pytest.raises(exc, match=match):
        ZeroOptimizer(ps, **kwargs)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))


def test_param_groups_after_load_state_dict_are_the_ones_the_step_reads(group: Any) -> None:
    ps = [torch.zeros(10, requires_grad=True)]
    opt = ZeroOptimizer(ps, ft.AdamW, lr=0.1)
    groups = opt.param_groups
    ps[0].grad = torch.ones(10)
    opt.step()
    opt.consolidate_state_dict()
    opt.load_state_dict(opt.state_dict())
    assert opt.param_groups is groups and opt.optim.param_groups is groups
    opt.param_groups[0]["lr"] = 0.0  # (an lr scheduler after a resume)
    before = ps[0].detach().clone()
    opt.step()
    assert torch.equal(before, ps[0])


def test_bad_parameters_raise_naming_them(group: Any) -> None:
    ps = _model()
    ps[1] = ps[1].detach().t().requires_grad_()
    with pytest.raises(ValueError, match=r"params\[1\]"):
        ZeroOptimizer(ps)
    ps = _model(torch.float16)  # fusedopt.torch's refusals stand, nothing modified
    before = [p.detach().clone() for p in ps]
    with pytest.raises(ValueError, match="split"):
        ZeroOptimizer(ps, master_weights="split")
    with pytest.raises(ValueError, match="state_dtype"):
        ZeroOptimizer(ps, state_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"params\[0\].*float32 and float64"):  # (trust ratios: no low precision)
        ZeroOptimizer(_model(torch.bfloat16), optimizer_class=ft.Lamb)
    ps[1] = ps[1].detach().to(torch.int32)
    with pytest.raises(TypeError, match=r"params\[1\]"):
        ZeroOptimizer(ps, optimizer_class=ft.SGD, lr=0.1)
    assert all(torch.equal(p, b) for p, b in zip(ps[:1], before[:1]))


def test_bad_step_input_raises_with_nothing_modified(group: Any) -> None:
    ps = _model()
    opt = ZeroOptimizer(ps, ft.AdamW, lr=W.LR)
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    snap = _snapshot(opt, ps)
    ps[1].grad_dtype = None  # (torch >= 2.10 refuses another dtype otherwise)
    ps[1].grad = torch.ones_like(ps[1], dtype=torch.float64)
    with pytest.raises(TypeError, match=r"grads\[1\]"):
        opt.step()
    ps[1].grad = torch.ones_like(ps[1])
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(grad_scale=0.0)
    with pytest.raises(ValueError, match="found_inf"):
        opt.step(found_inf=torch.zeros(2))
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError, match="Invalid learning rate"):
        opt.step()
    opt.param_groups[0]["lr"] = W.LR
    assert _same(snap, _snapshot(opt, ps))
    with pytest.raises(ValueError, match="to must be"):
        opt.consolidate_state_dict(to=1)
    with pytest.raises(RuntimeError, match="consolidate"):
        opt.state_dict()
    with pytest.raises(NotImplementedError, match="add_param_group"):
        opt.add_param_group({"params": [torch.zeros(3, requires_grad=True)]})
    # a state dict this layout cannot hold (different step counts in one group) is refused, nothing loaded
    opt.consolidate_state_dict(to=0)
    sd = pickle.loads(pickle.dumps(opt.state_dict()))
    sd["state"][2]["step"] = torch.tensor(5.0)
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(sd)
    del sd["state"][2]
    with pytest.raises(ValueError, match="not all"):
        opt.load_state_dict(sd)
    with pytest.raises(TypeError, match="state_dict"):
        opt.load_state_dict([])  # type: ignore[arg-type]
    assert _same(snap, _snapshot(opt, ps))
    with pytest.raises(TypeError, match="shards"):
        consolidate_state_dicts([])
    with pytest.raises(ValueError, match=r"shards\[0\]"):
        consolidate_state_dicts([{"format": "x"}])


def test_lr_scheduler_closure_and_ddp_mode_in_one_process(group: Any) -> None:
    ps, ref = _model(torch.float64), _model(torch.float64)
    opt = ZeroOptimizer(ps, ft.Adam, lr=0.05, reduce_grads=False)
    ropt = ft.Adam(ref, lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    rsched = torch.optim.lr_scheduler.StepLR(ropt, step_size=3, gamma=0.5)
    for t in range(1, 8):
        g = W.grads_for(9, t, W.SHAPES, "float64", 1, 0)[0]
        for p, q, x in zip(ps, ref, g):
            p.grad, q.grad = torch.from_numpy(x.copy()), torch.from_numpy(x.copy())
        assert opt.step(lambda: 3.0) == 3.0
        ropt.step()
        sched.step()
        rsched.step()
    assert opt.param_groups[0]["lr"] == ropt.param_groups[0]["lr"] != 0.05
    assert all(torch.equal(p, q) for p, q in zip(ps, ref))
    # the state is about 1/world of the parameters' (here: all of it, padded to whole blocks)
    n = sum(p.numel() for p in ps)
    assert 2 * n * 8 <= opt.state_bytes() <= 2 * (n + len(ps) * 2048) * 8
    assert math.isfinite(float(opt.param_groups[0]["lr"]))


@pytest.mark.parametrize("reduce_grads", [True, False])
def test_step_advances_autograd_version_counters(group: Any, reduce_grads: bool) -> None:
    """As an in-place torch update: a tensor saved for backward before the step is stale after it."""
    ps = _model(torch.float32)
    opt = ZeroOptimizer(ps, ft.AdamW, lr=0.05, reduce_grads=reduce_grads)
    w = ps[0]
    loss = (w * w).sum()  # saves w for backward
    before = [p._version for p in ps]
    for p in ps:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(p._version > v for p, v in zip(ps, before))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    skipped = [p._version for p in ps]
    ps[1].grad[0] = float("nan")
    opt.skip_if_nonfinite = True
    opt.step()  # skipped: nothing written, no version change
    assert opt.skipped_steps == 1 and [p._version for p in ps] == skipped


# -- the norm plan without processes: every rank's leaves simulated here ---------------------------
def test_norm_plan_gives_the_single_process_norm_for_many_layouts() -> None:
    from fusedopt.distributed._shard import ALIGN, NormPlan, make_buckets, shard_grad_of

    rng = np.random.default_rng(5)
    naive_differs = 0
    for trial in range(60):
        world = int(rng.integers(1, 6))
        n_groups = int(rng.integers(1, 3))
        groups, arrays, index = [], [], 0
        for _ in range(n_groups):
            items = []
            for _ in range(int(rng.integers(1, 6))):
                n = int(rng.choice([0, 1, 7, 2047, 2048, 2049, 5000, 9000]))
                dt = np.dtype(rng.choice(["float32", "float64"])) if trial % 2 else np.dtype("float32")
                arrays.append((rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(dt))
                items.append((index, (n,), dt))
                index += 1
            groups.append(items)
        buckets = make_buckets(groups, world)
        for bk in buckets:  # shards of whole blocks; no parameter's 2048-block straddles two ranks
            assert bk.padded % (world * ALIGN) == 0 and all(o % 16 == 0 for o in bk.offsets)
            assert bk.offsets[-1] + bk.sizes[-1] <= bk.padded
            assert all(bk.offsets[k] + bk.sizes[k] <= bk.offsets[k + 1] for k in range(len(bk.sizes) - 1))
            for off, n in zip(bk.offsets, bk.sizes):
                cuts = range(bk.shard, bk.padded, bk.shard)
                assert all((c - off) % ALIGN == 0 for c in cuts if off < c < off + n), (trial, world, off, n)
            assert bk.padded - sum(bk.sizes) < (world - 1 + 1) * ALIGN + 16 * len(bk.sizes) + world * ALIGN
        flats = []
        for bk in buckets:
            f = np.zeros(bk.padded, dtype=bk.dtype)
            for k, i in enumerate(bk.params):
                f[bk.offsets[k] : bk.offsets[k] + bk.sizes[k]] = arrays[i]
            flats.append(f)
        plan = NormPlan(buckets)
        total = np.zeros(len(plan.leaves) + 1)
        naive = 0.0
        for r in range(world):  # each rank fills its leaves; the all-reduce is a sum with zeros
            vals = np.zeros_like(total)
            shards = [f[r * bk.shard : (r + 1) * bk.shard] for f, bk in zip(flats, buckets)]
            plan.local_values(r, shard_grad_of(shards), vals, 1)
            total += vals
            naive += F.global_norm([s for s in shards]) ** 2 if any(s.size for s in shards) else 0.0
        want = F.global_norm(arrays)
        assert math.sqrt(plan.total(total)) == want, (trial, world)
        naive_differs += math.sqrt(naive) != want
    assert naive_differs > 0  # adding per-rank sums would not have been bitwise


# -- the NumPy route under mpirun (optional: mpi4py and Open MPI) ----------------------------------
@pytest.mark.parametrize("world", [2, 3])
def test_numpy_route_over_mpi(tmp_path: Path, world: int) -> None:
    import shutil

    pytest.importorskip("mpi4py")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        pytest.skip("mpirun (Open MPI) is not installed")
    worker = Path(__file__).with_name("zero_mpi_worker.py")
    proc = subprocess.run([mpirun, "--allow-run-as-root", "--oversubscribe", "-n", str(world), sys.executable,
                           str(worker), str(tmp_path)], capture_output=True, text=True, timeout=180)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for dt in ("float32", "float64"):
        ps = W.init_params(W.SHAPES, dt)
        m = [np.zeros_like(p) for p in ps]
        v = [np.zeros_like(p) for p in ps]
        for t in range(1, W.STEPS + 1):
            F.adamw(ps, W.grads_for(600, t, W.SHAPES, dt, 1, 0)[0], m, v, step=t, lr=W.LR, max_grad_norm=5.0)
        for r in range(world):
            with open(tmp_path / f"mpi_r{r}.pkl", "rb") as f:
                got = pickle.load(f)
            assert got["torch_imported"] is False  # the NumPy route needs no torch
            assert _equal(got[dt], ps), f"{dt}: MPI rank {r} of {world}"
    qs = W.init_params(W.SHAPES, "float64")
    m, v = [np.zeros_like(q) for q in qs], [np.zeros_like(q) for q in qs]
    for t in range(1, W.STEPS + 1):
        F.lamb(qs, W.grads_for(610, t, W.SHAPES, "float64", 1, 0)[0], m, v, step=t, lr=W.LR, weight_decay=0.01)
    for r in range(world):
        with open(tmp_path / f"mpi_r{r}.pkl", "rb") as f:
            assert _equal(pickle.load(f)["lamb"], qs), f"lamb: MPI rank {r} of {world}"
