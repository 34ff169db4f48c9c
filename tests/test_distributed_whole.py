"""fusedopt.distributed.ZeroOptimizer with fusedopt.torch.Muon and Adafactor: whole-parameter
ownership (fusedopt.distributed._whole), real processes on loopback.

The worlds of 1, 2 and 3 ranks run once per module in one helper process
(tests/zero_whole_worker.py: forks each world, FileStore rendezvous, deadlines, kills leftovers);
the tests compare every rank's results with single-process fusedopt.torch runs here, bitwise,
given the same averaged gradients. torch's intra-op thread count is 1 on both sides (Muon's
Newton-Schulz runs torch.mm). Bad input runs in this process on a world of one.
"""

from __future__ import annotations

import copy
import datetime
import importlib.util
import math
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import fusedopt.functional as F  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt import _scalars  # noqa: E402
from fusedopt.distributed import ZeroOptimizer, consolidate_state_dicts  # noqa: E402
from fusedopt.distributed._whole import WholeParamZero, assign_owners  # noqa: E402

WORKER = Path(__file__).with_name("zero_whole_worker.py")
_spec = importlib.util.spec_from_file_location("zero_whole_worker", WORKER)
assert _spec is not None and _spec.loader is not None
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)
_lspec = importlib.util.spec_from_file_location("zero_launch", Path(__file__).with_name("zero_launch.py"))
assert _lspec is not None and _lspec.loader is not None
L = importlib.util.module_from_spec(_lspec)
_lspec.loader.exec_module(L)

WORLDS = ["w2", "w3", "w1", "dead", "hang"]
TOTAL_TIMEOUT = 300


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    res: Dict[str, Any] = L.collect(WORKER, tmp_path_factory.mktemp("zero_whole"), W.WORLDS, WORLDS, TOTAL_TIMEOUT)
    return res


def _ranks_ok(res: Dict[str, Any], sc: str) -> List[Dict[str, Any]]:
    ranks: List[Dict[str, Any]] = res[sc]
    for r, d in enumerate(ranks):
        assert d is not None, f"{sc}: rank {r} wrote no result ({res[sc + '_exit']})"
        assert "error" not in d, f"{sc} rank {r}:\n{d['error']}"
    return ranks


def _equal(got: List[np.ndarray], want: List[np.ndarray]) -> bool:
    return len(got) == len(want) and all(g.dtype == w.dtype and np.array_equal(g, w) for g, w in zip(got, want))


# -- the single-process reference: the documented equivalent, on the averaged gradients --------
def _prepared_grads(case: Any, seed: int, t: int, log: Optional[List[float]] = None) -> List[np.ndarray]:
    """The averaged gradients A after grad_scale, global-norm clipping and clip_value, as the class
    docstring of WholeParamZero states the single-process equivalent."""
    zkw = case[6]
    g = [x.copy() for x in W.case_grads(seed, case, t, 1, 0)[0]]
    if case[7] is not None:
        g = [np.divide(x, x.dtype.type(case[7])) for x in g]
    if zkw.get("max_grad_norm") is not None:
        norm = F.global_norm(g)
        if log is not None:
            log.append(norm)
        coef = _scalars.clip_coef(norm, zkw["max_grad_norm"])
        if coef != 1.0:
            g = [x * x.dtype.type(coef) for x in g]
    if zkw.get("clip_value") is not None:
        v = zkw["clip_value"]
        g = [np.clip(x, x.dtype.type(-v), x.dtype.type(v)) for x in g]
    return g


def _reference(case: Any, seed: int, start: int = 1, params: Any = None, sd: Any = None,
               skip: Any = (), log: Optional[List[float]] = None) -> Any:  # fmt: skip
    ps = W.make_params(case) if params is None else [p.clone().requires_grad_() for p in params]
    opt = getattr(ft, case[1])(W.groups_of(case, ps), **case[5])
    if sd is not None:  # (torch's loader keeps the dict's tensors when their dtype fits: a copy)
        opt.load_state_dict(copy.deepcopy(sd))
    for t in range(start, W.STEPS + 1):
        if t in skip:
            continue
        for p, g in zip(ps, _prepared_grads(case, seed, t, log)):
            p.grad = torch.from_numpy(g)
        opt.step()
    return W._numpy(ps), opt


_REF: Dict[str, Any] = {}


def _ref_of(k: int) -> Any:
    if k not in _REF:
        log: List[float] = []
        params, opt = _reference(W.CASES[k], k, log=log)
        _REF[k] = (params, opt, log)
    return _REF[k]


# -- multi-process worlds ----------------------------------------------------------------------
def test_a_dead_rank_or_a_timeout_raises_in_bounded_time(worlds: Dict[str, Any]) -> None:
    dead = worlds["dead2"][0]
    assert dead is not None and "error" not in dead, worlds["_log"]
    assert dead["raised"] is not None and dead["seconds"] < 30, dead
    hang = worlds["hang2"][0]
    assert hang is not None and "error" not in hang, worlds["_log"]
    assert hang["raised"] is not None and 2.0 < hang["seconds"] < 30, hang  # the optimizer's 3 s timeout


def test_worlds_ran(worlds: Dict[str, Any]) -> None:
    for wname in WORLDS[:3]:  # (in "dead" and "hang" rank 1 is lost on purpose)
        world = W.WORLDS[wname][0]
        for sc in W.WORLDS[wname][1]:
            _ranks_ok(worlds, f"{sc}{world}")
            assert worlds[f"{sc}{world}_exit"]["codes"] == [0] * world, worlds["_log"]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("k", range(len(W.CASES)), ids=[c[0] for c in W.CASES])
def test_parity_bitwise(worlds: Dict[str, Any], world: int, k: int) -> None:
    """STEPS steps on every rank: bitwise the single-process fusedopt.torch class given the same
    averaged gradients (float32/float64, options, two param groups, clipping, grad_scale, DDP)."""
    case = W.CASES[k]
    want, _, log = _ref_of(k)
    for r, d in enumerate(_ranks_ok(worlds, f"parity{world}")):
        got = d[case[0]]
        assert got["type"] == "WholeParamZero"
        assert _equal(got["params"], want), f"{case[0]}: rank {r} of {world} differs from a single process"
        if log:  # the norm is the single process's, bitwise, and the clip was active at least once
            assert got["norm"] == log[-1]
            assert any(n > case[6]["max_grad_norm"] for n in log)


@pytest.mark.parametrize("world", [2, 3])
def test_ownership_and_state_memory(worlds: Dict[str, Any], world: int) -> None:
    """Owners from the shapes only, the same on every rank; the state bytes split over the ranks
    (sum: the single process's; each rank about 1/N)."""
    for k, case in enumerate(W.CASES):
        _, single, _ = _ref_of(k)
        total = sum(v.nbytes for st in single.state.values() for v in st.values() if isinstance(v, torch.Tensor))
        ranks = [d[case[0]] for d in _ranks_ok(worlds, f"parity{world}")]
        sizes = [math.prod(s) for s in W.SHAPES[case[1]]]
        assert all(d["owners"] == assign_owners(sizes, world) for d in ranks)
        assert sorted(set(ranks[0]["owners"])) == list(range(world))
        per = [d["bytes"] for d in ranks]
        assert sum(per) == total, (per, total)
        biggest = max(sizes) / sum(sizes)
        assert max(per) <= total * (1 / world + biggest), (per, total)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_found_inf_and_nonfinite_skip_every_rank(worlds: Dict[str, Any], world: int) -> None:
    want, _ = _reference(W.CASES[0], 0, skip=(2, 4))
    for d in _ranks_ok(worlds, f"skip{world}"):
        assert d["skipped"] == 2
        assert _equal(d["params"], want)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_adafactor_eps1_from_the_whole_group(worlds: Dict[str, Any], world: int) -> None:
    """eps=(None, ...): the group's first parameter (float32) fixes eps1, also on a rank that owns
    only the float64 parameter."""
    ps = W.mixed_params()
    opt = ft.Adafactor(ps, lr=0.01)
    for t in range(1, W.STEPS + 1):
        for p, g in zip(ps, W.mixed_grads(t, 1, 0)[0]):
            p.grad = torch.from_numpy(g)
        opt.step()
    ranks = _ranks_ok(worlds, f"mixed{world}")
    if world == 2:
        assert ranks[0]["owners"] == [1, 0, 1]  # (rank 0 owns only the float64 parameter)
    for d in ranks:
        assert _equal(d["params"], W._numpy(ps))


def test_rank_owning_nothing(worlds: Dict[str, Any]) -> None:
    ps = [torch.from_numpy(a).requires_grad_() for a in W.init_params([(6, 4), (3, 5)], "float64")]
    opt = ft.Muon([{"params": ps[:1]}, {"params": ps[1:], "lr": 0.05}], lr=0.02)
    for t in range(1, W.STEPS + 1):
        for p, g in zip(ps, W.grads_for(400, t, [(6, 4), (3, 5)], "float64", 1, 0)[0]):
            p.grad = torch.from_numpy(g)
        opt.step()
    ranks = _ranks_ok(worlds, "few3")
    assert ranks[0]["owners"] == [0, 1] and ranks[2]["bytes"] == 0
    for d in ranks:
        assert _equal(d["params"], W._numpy(ps))
    sd = ranks[2]["sd"]
    ref = opt.state_dict()
    assert sd["param_groups"] == ref["param_groups"]
    assert all(torch.equal(sd["state"][i]["momentum_buffer"], ref["state"][i]["momentum_buffer"]) for i in (0, 1))


def test_consolidated_state_dict(worlds: Dict[str, Any]) -> None:
    """2 ranks: consolidate_state_dict(to=1) equals consolidate_state_dicts of the shards; it is
    the single process's state dict at that step (bitwise), and torch.optim loads it."""
    ranks = _ranks_ok(worlds, "save2")
    for case in W.SAVE_CASES:
        k = W.CASES.index(case)
        sd = ranks[1][case[0] + "_sd"]
        shards = [ranks[r][case[0] + "_shard"] for r in (1, 0)]
        assert all(s["format"] == "fusedopt.zero-whole/1" for s in shards)
        offline = consolidate_state_dicts(shards)
        ps = W.make_params(case)
        single = getattr(ft, case[1])(W.groups_of(case, ps), **case[5])
        for t in range(1, W.SAVE_AT + 1):
            for p, g in zip(ps, _prepared_grads(case, k, t)):
                p.grad = torch.from_numpy(g)
            single.step()
        ssd = single.state_dict()
        for d in (sd, offline):
            assert d["param_groups"] == ssd["param_groups"]
            assert sorted(d["state"]) == sorted(ssd["state"]) == list(range(len(ps)))
            for i, entry in ssd["state"].items():
                assert entry.keys() == d["state"][i].keys()
                for key, v in entry.items():
                    assert v.dtype == d["state"][i][key].dtype and torch.equal(v, d["state"][i][key]), (i, key)
        theirs = getattr(torch.optim, case[1])(W.groups_of(case, [p.detach().clone() for p in ps]), **case[5])
        theirs.load_state_dict(sd)
        assert len(theirs.state) == len(ps)
    with pytest.raises(ValueError, match="ranks 0 to 1"):
        consolidate_state_dicts([ranks[0][W.SAVE_CASES[0][0] + "_shard"]])


@pytest.mark.parametrize("world", [3, 1])
def test_resume_from_two_ranks(worlds: Dict[str, Any], world: int) -> None:
    """Saved on 2 ranks after step 3, consolidated, loaded by 3 ranks / 1 rank and by a single
    fusedopt.torch process: every continuation is bitwise the uninterrupted run."""
    saved = _ranks_ok(worlds, "save2")[1]
    for case in W.SAVE_CASES:
        k = W.CASES.index(case)
        want = _ref_of(k)[0]
        for d in _ranks_ok(worlds, f"resume{world}"):
            assert _equal(d[case[0]], want), case[0]
        got, _ = _reference(case, k, start=W.SAVE_AT + 1, params=saved[case[0] + "_params"], sd=saved[case[0] + "_sd"])
        assert _equal(got, want)


# -- one process (a world of one, in this process) -----------------------------------------
@pytest.fixture(scope="module")
def group(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if dist.is_initialized():  # pragma: no cover
        yield dist.group.WORLD
        return
    store = tmp_path_factory.mktemp("store_whole") / "s"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=30))  # fmt: skip
    yield dist.group.WORLD
    dist.destroy_process_group()


def _muon_params() -> List[Any]:
    return W.make_params(W.CASES[0])


def test_dispatch_and_isinstance(group: Any) -> None:
    opt = ZeroOptimizer(_muon_params(), ft.Muon, lr=0.02)
    assert type(opt) is WholeParamZero and isinstance(opt, ZeroOptimizer)
    opt = ZeroOptimizer(W.make_params(W.CASES[2]), optimizer_class=ft.Adafactor, lr=0.01)
    assert type(opt) is WholeParamZero
    assert type(ZeroOptimizer(_muon_params(), ft.AdamW, lr=0.01)) is ZeroOptimizer
    assert type(ZeroOptimizer(_muon_params(), ft.Lamb, lr=0.01)) is ZeroOptimizer  # (trust ratios: element ranges)


def test_bad_input_names_the_argument(group: Any) -> None:
    ps = _muon_params()
    before = [p.detach().clone() for p in ps]
    bad: List[Any] = [
        (TypeError, "reduce_grads", dict(reduce_grads="yes")),
        (ValueError, "max_grad_norm", dict(max_grad_norm=-1.0)),
        (ValueError, "clip_value", dict(clip_value=-0.5)),
        (ValueError, "threads", dict(threads=0)),
        (TypeError, "timeout", dict(timeout=5)),
        (ValueError, "Learning rate", dict(lr=-1.0)),
    ]
    for exc, word, kw in bad:
        with pytest.raises(exc, match=word):
            ZeroOptimizer(ps, ft.Muon, **{"lr": 0.02, **kw})
    with pytest.raises(ValueError, match="2D"):
        ZeroOptimizer([torch.zeros(5, requires_grad=True)], ft.Muon, lr=0.02)
    with pytest.raises(TypeError, match=r"params\[1\]"):
        ZeroOptimizer([torch.zeros(5), torch.zeros(3, dtype=torch.float16)], ft.Adafactor)
    with pytest.raises(ValueError, match=r"params\[0\] must be contiguous"):
        ZeroOptimizer([torch.zeros(4, 6).T], ft.Muon)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    opt = ZeroOptimizer(ps, ft.Muon, lr=0.02)
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="found_inf"):
        opt.step(found_inf=torch.zeros(2))
    with pytest.raises(ValueError, match="grad_scale"):
        opt.step(grad_scale=-1.0)
    assert all(torch.equal(p, b) for p, b in zip(ps, before))
    with pytest.raises(ValueError, match="to must be a rank"):
        opt.consolidate_state_dict(to=1)


def test_load_state_dict_checks_and_modifies_nothing(group: Any) -> None:
    case = W.CASES[2]  # Adafactor float32
    ps = W.make_params(case)
    opt = ZeroOptimizer(ps, ft.Adafactor, lr=0.01)
    for t in range(1, 3):
        for p, g in zip(ps, W.case_grads(2, case, t, 1, 0)[0]):
            p.grad = torch.from_numpy(g)
        opt.step()
    opt.consolidate_state_dict()
    good = opt.state_dict()
    snap = {i: {k: v.clone() for k, v in e.items()} for i, e in good["state"].items()}
    lr_before = opt.param_groups[0]["lr"]
    bad = {"state": {**good["state"], 1: {**good["state"][1], "row_var": torch.zeros(3, 1)}},
           "param_groups": [dict(good["param_groups"][0], lr=0.5)]}  # fmt: skip
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\[1\]\['row_var'\]"):
        opt.load_state_dict(bad)
    bad2 = {"state": good["state"], "param_groups": [dict(good["param_groups"][0], lr=-1.0)]}
    with pytest.raises(ValueError, match=r"param_groups'\]\[0\]"):
        opt.load_state_dict(bad2)
    with pytest.raises(TypeError, match="state_dict"):
        opt.load_state_dict([])  # type: ignore[arg-type]
    assert opt.param_groups[0]["lr"] == lr_before
    opt.consolidate_state_dict()
    now = opt.state_dict()["state"]
    assert all(torch.equal(v, now[i][k]) for i, e in snap.items() for k, v in e.items())


def test_lr_scheduler_and_version_counter(group: Any) -> None:
    """A scheduler on the ZeroOptimizer's param_groups drives the inner optimizer; writes bump the
    parameters' version counters."""
    case = W.CASES[0]
    ps = W.make_params(case)
    opt = ZeroOptimizer(ps, ft.Muon, **case[5])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref_ps = W.make_params(case)
    ref = ft.Muon(ref_ps, **case[5])
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=1, gamma=0.5)
    for t in range(1, 4):
        g = W.case_grads(0, case, t, 1, 0)[0]
        for p, q, x in zip(ps, ref_ps, g):
            p.grad, q.grad = torch.from_numpy(x.copy()), torch.from_numpy(x.copy())
        v0 = ps[0]._version
        opt.step()
        assert ps[0]._version > v0
        assert set(opt.last_timings) == {"pack", "all_reduce", "norm_exchange", "step", "broadcast"}
        ref.step()
        sched.step()
        ref_sched.step()
    assert _equal(W._numpy(ps), W._numpy(ref_ps))
