"""``WholeParamZero``: ZeRO stage 1 by whole-parameter ownership, for the fusedopt.torch optimizers
whose update reads a whole tensor (``Muon``: Newton-Schulz on the matrix; ``Adafactor``: its row
and column statistics), which cannot be sharded by element ranges (:mod:`._zero`).

``ZeroOptimizer(params, optimizer_class=fusedopt.torch.Muon, ...)`` returns one of these
(``ZeroOptimizer.__new__``); it is a :class:`ZeroOptimizer` with the same constructor keywords,
``step`` options, checkpoint methods and ``param_groups``.
"""

from __future__ import annotations

import copy
import datetime
import math
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .. import _adafactor, _muon, _scalars, _threads
from .. import functional as F
from .. import torch as ftorch
from ._shard import START_ALIGN
from ._zero import ZeroOptimizer, _default_threads, _optimizer_group, check_shards

#: the ``format`` entry of a :meth:`WholeParamZero.shard_state_dict`
WHOLE_FORMAT = "fusedopt.zero-whole/1"


def whole_param_class(cls: Any) -> bool:
    """Whether ``cls`` is stepped by whole-parameter ownership (fusedopt.torch.Muon, Adafactor)."""
    return isinstance(cls, type) and issubclass(cls, (ftorch.Muon, ftorch.Adafactor))


def assign_owners(sizes: Sequence[int], world_size: int) -> List[int]:
    """The rank owning each parameter, from the element counts only (the same on every rank):
    largest first (ties: lower index first), each to the rank with the fewest elements so far
    (ties: the lower rank)."""
    loads = [0] * world_size
    owners = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda k: (-int(sizes[k]), k)):
        r = min(range(world_size), key=lambda j: (loads[j], j))
        owners[i] = r
        loads[r] += int(sizes[i])
    return owners


def _aligned(n: int) -> int:
    return -(-n // START_ALIGN) * START_ALIGN


class _Bucket:
    """The parameters of one (param group, dtype), laid out by owner (rank 0's first, each rank's
    in parameter order, every one starting on a 16-element edge): rank ``r``'s parameters are the
    contiguous range ``ranges[r]`` of the flat buffers."""

    def __init__(self, group: int, dtype: torch.dtype, params: List[int], sizes: List[int], owners: List[int],
                 world_size: int) -> None:  # fmt: skip
        self.group, self.dtype = group, dtype
        self.params = sorted(params, key=lambda i: (owners[i], i))
        self.offsets: List[int] = []
        self.ranges: List[Tuple[int, int]] = []
        off = 0
        for r in range(world_size):
            lo = off
            for i in self.params:
                if owners[i] == r:
                    self.offsets.append(off)
                    off += _aligned(sizes[i])
            self.ranges.append((lo, off))
        self.size = off


class WholeParamZero(ZeroOptimizer):
    """ZeRO stage 1 for ``fusedopt.torch.Muon`` and ``fusedopt.torch.Adafactor``: each rank owns
    whole parameters and keeps their optimizer state only (about 1/N of a single process's).

    Made by ``ZeroOptimizer(params, optimizer_class=ft.Muon | ft.Adafactor, process_group=None,
    **kwargs)`` (same keywords: ``reduce_grads``, ``max_grad_norm``, ``skip_if_nonfinite``,
    ``clip_value``, ``threads``, ``timeout``, and the class's own arguments).

    Ownership: parameters are assigned to ranks from their element counts only (largest first,
    each to the least loaded rank; :func:`assign_owners`), the same on every rank. Each rank runs
    one ``optimizer_class`` instance over the parameters it owns, with the user's param groups and
    their hyperparameters (copied from :attr:`param_groups` before every step, so lr schedulers
    work; a group with no parameter on this rank stays an empty group): its per-tensor results are
    the single-process optimizer's. The parameters of each (param group, dtype) are packed into
    one flat buffer laid out by owner (the parameters' ``.data`` become views into it), so the
    exchange after the step is one in-place broadcast per rank and bucket of that rank's
    contiguous range (not one per parameter, as ``ZeroRedundancyOptimizer``).

    A step, on every rank (a collective: every rank calls it with the same kinds of options):

    1. the gradients are copied into a flat gradient buffer per (group, dtype) (``None``: zeros,
       DDP's convention); with ``reduce_grads=True`` one in-place all-reduce (sum) per buffer and
       a division by the world size in the parameter's dtype: the averaged gradient is
       ``fl(sum / world_size)``; with ``reduce_grads=False`` the ``.grad`` are DDP's averages
       (copied, never written);
    2. ``grad_scale``: every averaged gradient is divided by ``dtype(grad_scale)`` in its dtype
       (``g = fl(g / grad_scale)``);
    3. with ``max_grad_norm`` or ``skip_if_nonfinite``: ``norm = fusedopt.functional.global_norm``
       of all those (unscaled) gradients in parameter order, computed by every rank on its own
       full copy (bitwise the same everywhere); with ``found_inf`` or ``skip_if_nonfinite``: one
       float64 all-reduce of the flags, so any rank's ``found_inf`` (or a non-finite norm) skips
       the step on every rank;
    4. ``max_grad_norm``: ``g *= dtype(coef)`` with ``coef = fusedopt._scalars.clip_coef(norm,
       max_grad_norm)`` (skipped when ``coef == 1``); ``clip_value``: ``g = clamp(g, -v, v)`` in
       the gradient's dtype;
    5. ``optimizer_class.step()`` on this rank's parameters (``threads`` fusedopt threads, set with
       ``fusedopt.set_num_threads`` for the duration of the call and restored; torch's
       own intra-op thread count is left alone: Muon's Newton-Schulz runs ``torch.mm``/``addmm``,
       whose results may depend on it, so compare runs with the same ``torch.set_num_threads``);
    6. each rank broadcasts its updated range of every flat parameter buffer.

    The single-process equivalent, bitwise: given the averaged gradients ``g`` of every parameter,
    ``g /= dtype(grad_scale)``; ``norm = fusedopt.functional.global_norm(all g)``;
    ``g *= dtype(clip_coef(norm, max_grad_norm))`` if that is not 1; ``g.clamp_(-clip_value,
    clip_value)``; then ``optimizer_class(same param groups, **kwargs).step()``.

    State: ``self.state`` stays empty; :meth:`state_bytes`, :meth:`shard_state_dict` (format
    :data:`WHOLE_FORMAT`), :meth:`consolidate_state_dict` then :meth:`state_dict` (an ordinary
    state dict of ``optimizer_class``), :meth:`load_state_dict` (any world size).
    Memory besides the state: a full flat gradient buffer per rank (also with ``reduce_grads=False``).
    """

    def __init__(self, params: Any, optimizer_class: Any = ftorch.Muon, process_group: Any = None, *,
                 reduce_grads: bool = True, max_grad_norm: Optional[float] = None, skip_if_nonfinite: bool = False,
                 clip_value: Optional[float] = None, threads: Optional[int] = None,
                 timeout: Optional[datetime.timedelta] = None, **defaults: Any) -> None:  # fmt: skip
        if not whole_param_class(optimizer_class):
            name = getattr(optimizer_class, "__name__", type(optimizer_class).__name__)
            raise TypeError(f"optimizer_class must be fusedopt.torch.Muon or fusedopt.torch.Adafactor for "
                            f"whole-parameter ownership, got {name}")  # fmt: skip
        self._keep_options(reduce_grads, max_grad_norm, skip_if_nonfinite, clip_value, threads, timeout)
        params = list(params) if not isinstance(params, torch.Tensor) else [params]
        front = optimizer_class(params, **defaults)  # (checks the hyperparameters, Muon's 2-D rule)
        all_params: List[torch.Tensor] = [p for g in front.param_groups for p in g["params"]]
        for i, p in enumerate(all_params):
            if p.dtype not in (torch.float32, torch.float64):
                raise TypeError(f"params[{i}] has dtype {p.dtype}; ZeroOptimizer with {optimizer_class.__name__} "
                                "takes float32 and float64 parameters")  # fmt: skip
            if p.device.type != "cpu" or p.layout != torch.strided:
                raise ValueError(f"params[{i}] must be a dense CPU tensor, got {p.device} {p.layout}")
            if not p.is_contiguous():
                raise ValueError(f"params[{i}] must be contiguous")
        #: the wrapped optimizer over every parameter: holds the param groups, never stepped
        self.optim = front
        self._cls = optimizer_class
        self._defaults_kw = dict(defaults)
        self._initializing = True
        torch.optim.Optimizer.__init__(self, all_params, dict(front.defaults))
        self._initializing = False
        self.param_groups = front.param_groups
        self.defaults = front.defaults

        group = self.process_group = _optimizer_group(process_group, timeout)
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self._global_ranks = dist.get_process_group_ranks(group)
        self.threads = threads if threads is not None else _default_threads(group)
        self._params = all_params
        sizes = [p.numel() for p in all_params]
        #: the rank owning each parameter (index in the order over all groups)
        self.owners = assign_owners(sizes, self.world_size)
        r = self.rank
        self._wbuckets: List[_Bucket] = []
        index = 0
        for gi, g in enumerate(front.param_groups):
            by_dtype: Dict[torch.dtype, List[int]] = {}
            for k, p in enumerate(g["params"]):
                by_dtype.setdefault(p.dtype, []).append(index + k)
            index += len(g["params"])
            for dt, idx in by_dtype.items():
                self._wbuckets.append(_Bucket(gi, dt, idx, sizes, self.owners, self.world_size))
        self._flat: List[torch.Tensor] = []
        self._flat_grad: List[torch.Tensor] = []
        self._pviews: List[Optional[torch.Tensor]] = [None] * len(all_params)
        self._grad_views: List[Optional[torch.Tensor]] = [None] * len(all_params)
        proxies: Dict[int, torch.Tensor] = {}
        with torch.no_grad():
            for bk in self._wbuckets:
                flat = torch.zeros(bk.size, dtype=bk.dtype)
                gflat = torch.zeros(bk.size, dtype=bk.dtype)
                for i, off in zip(bk.params, bk.offsets):
                    p = all_params[i]
                    v = flat[off : off + sizes[i]].view(p.shape)
                    v.copy_(p)
                    p.data = v
                    self._pviews[i] = v
                    self._grad_views[i] = gflat[off : off + sizes[i]].view(p.shape)
                    if self.owners[i] == r:  # the inner optimizer's tensor: the same memory, its own grad
                        q = flat[off : off + sizes[i]].view(p.shape)
                        q.grad = self._grad_views[i]
                        proxies[i] = q
                self._flat.append(flat)
                self._flat_grad.append(gflat)
        #: global parameter indices of this rank's parameters, in the inner optimizer's order
        self._owned: List[int] = []
        inner_groups = []
        index = 0
        for g in front.param_groups:
            mine = [index + k for k in range(len(g["params"])) if self.owners[index + k] == r]
            index += len(g["params"])
            self._owned += mine
            inner_groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": [proxies[i] for i in mine]})
        self._proxies = [proxies[i] for i in self._owned]
        #: the optimizer stepping this rank's parameters (None when it owns none)
        self.inner: Optional[Any] = optimizer_class(inner_groups, **defaults) if self._owned else None
        self._consolidated: Optional[Dict[str, Any]] = None
        self._last_norm: Optional[float] = None
        #: seconds of the last step's phases: pack (gradients into the flat buffers, division,
        #: unscaling), all_reduce, norm_exchange (the norm and the flags' all-reduce), step (clip
        #: and the inner optimizer), broadcast (the updated ranges)
        self.last_timings: Dict[str, float] = {}
        #: steps skipped (found_inf, or a non-finite norm with skip_if_nonfinite), the same on every rank
        self.skipped_steps = 0

    @property
    def last_grad_norm(self) -> Optional[float]:
        """The global norm of the unscaled averaged gradients at the last step, when computed."""
        return self._last_norm

    # -- step ------------------------------------------------------------------------------------
    def _check_group(self, g: Dict[str, Any]) -> None:
        """The hyperparameters of a param group, checked as ``optimizer_class`` checks them."""
        lr = g["lr"]
        h = {**g, "lr": float(lr.item()) if isinstance(lr, torch.Tensor) else lr}
        (_muon if issubclass(self._cls, ftorch.Muon) else _adafactor).check_hypers(h)

    def _sync_hypers(self) -> None:
        """The user's group hyperparameters into the inner optimizer's groups (Adafactor's
        ``eps1=None`` resolved from the first parameter of the whole group, as a single process)."""
        assert self.inner is not None
        for g, ig in zip(self.param_groups, self.inner.param_groups):
            for k, v in g.items():
                if k != "params":
                    ig[k] = v
            if issubclass(self._cls, ftorch.Adafactor) and g["params"]:
                eps = g["eps"]
                if isinstance(eps, (tuple, list)) and len(eps) == 2 and eps[0] is None:
                    ig["eps"] = (float(torch.finfo(g["params"][0].dtype).eps), eps[1])

    def step(self, closure: Optional[Callable[[], Any]] = None, *, grad_scale: Any = None,
             found_inf: Any = None) -> Any:  # fmt: skip
        """One step on every rank (a collective; see the class docstring for its phases).
        ``grad_scale`` (AMP unscaling) and ``found_inf`` (this rank's AMP flag: any rank's nonzero
        flag skips the step on every rank) are optional."""
        loss, opts = self._begin_step(closure, grad_scale, found_inf)
        if self.inner is not None:
            for g in self.param_groups:  # (checked before anything moves: every rank raises alike)
                self._check_group(g)
        grads = self._checked_grads()
        w = self.world_size
        tm = self.last_timings = {"pack": 0.0, "all_reduce": 0.0, "norm_exchange": 0.0, "step": 0.0, "broadcast": 0.0}
        t0 = time.perf_counter()
        with torch.no_grad():
            for i, p in enumerate(self._params):  # a parameter whose .data was replaced is packed again
                v = self._pviews[i]
                assert v is not None
                if p.data_ptr() != v.data_ptr() or p.shape != v.shape:
                    v.copy_(p.reshape(v.shape))
                    p.data = v
            for i, g in enumerate(grads):
                gv = self._grad_views[i]
                assert gv is not None
                if g is None:
                    gv.zero_()
                elif g.data_ptr() != gv.data_ptr():
                    gv.copy_(g)
            for gflat in self._flat_grad:
                a = gflat.numpy()
                if self._reduce_grads and w > 1:
                    t1 = time.perf_counter()
                    dist.all_reduce(gflat, group=self.process_group)
                    tm["all_reduce"] += time.perf_counter() - t1
                    np.divide(a, a.dtype.type(w), out=a)
                if opts.grad_scale_given:
                    np.divide(a, a.dtype.type(opts.scale), out=a)
        t1 = time.perf_counter()
        tm["pack"] = t1 - t0 - tm["all_reduce"]
        self._last_norm = None
        norm = math.nan
        if opts.max_norm is not None or opts.skip_nonfinite:
            norm = F.global_norm([gv.numpy() for gv in self._grad_views if gv is not None], threads=self.threads)
            self._last_norm = norm
        if opts.given_found_inf or opts.skip_nonfinite:
            flags = torch.tensor([1.0 if opts.found_inf else 0.0,
                                  1.0 if opts.skip_nonfinite and not math.isfinite(norm) else 0.0],
                                 dtype=torch.float64)  # fmt: skip
            if w > 1:
                dist.all_reduce(flags, group=self.process_group)
            if flags[0].item() != 0.0 or flags[1].item() != 0.0:
                self.skipped_steps += 1
                tm["norm_exchange"] = time.perf_counter() - t1
                return loss
        t2 = time.perf_counter()
        tm["norm_exchange"] = t2 - t1
        coef = 1.0 if opts.max_norm is None else _scalars.clip_coef(norm, opts.max_norm)
        if self.inner is not None:
            with torch.no_grad():
                for q in self._proxies:
                    assert q.grad is not None
                    a = q.grad.numpy()
                    if coef != 1.0:
                        np.multiply(a, a.dtype.type(coef), out=a)
                    if math.isfinite(opts.value):
                        np.clip(a, a.dtype.type(-opts.value), a.dtype.type(opts.value), out=a)
            self._sync_hypers()
            old = _threads._user_threads
            _threads.set_num_threads(self.threads)
            try:
                self.inner.step()
            finally:
                _threads._user_threads = old
        t3 = time.perf_counter()
        tm["step"] = t3 - t2
        if w > 1:
            with torch.no_grad():
                for bk, flat in zip(self._wbuckets, self._flat):
                    for j, (lo, hi) in enumerate(bk.ranges):
                        if hi > lo:
                            dist.broadcast(flat[lo:hi], src=self._global_ranks[j], group=self.process_group)
        tm["broadcast"] = time.perf_counter() - t3
        # written through other views of the flat buffers: advance the parameters' version counters
        # as an in-place torch update does (a tensor saved for backward before this step then raises)
        torch._C._increment_version(self._params)
        return loss

    # -- checkpoints -----------------------------------------------------------------------------
    def shard_state_dict(self) -> Dict[str, Any]:
        """This rank's optimizer state (entries of the parameters it owns, keyed by their index
        over all groups, as an ordinary state dict) with the layout; ``torch.save`` it per rank;
        :func:`fusedopt.distributed.consolidate_state_dicts` of every rank's gives the ordinary
        state dict."""
        state: Dict[int, Dict[str, Any]] = {}
        if self.inner is not None:
            for k, entry in self.inner.state_dict()["state"].items():
                state[self._owned[k]] = {key: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                         for key, v in entry.items()}  # fmt: skip
        return {"format": WHOLE_FORMAT, "optimizer": self._cls.__name__, "world_size": self.world_size,
                "rank": self.rank, "owners": list(self.owners),
                "shapes": [list(p.shape) for p in self._params],
                "dtypes": [str(p.dtype).replace("torch.", "") for p in self._params],
                "state": state, "param_groups": self.optim.state_dict()["param_groups"]}  # fmt: skip

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard on rank ``to`` of the group (a collective: every rank calls
        it); :meth:`state_dict` on that rank then returns the ordinary state dict."""
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < self.world_size:
            raise ValueError(f"to must be a rank of the group (0 to {self.world_size - 1}), got {to!r}")
        mine = self.shard_state_dict()
        got: Optional[List[Any]] = [None] * self.world_size if self.rank == to else None
        if self.world_size > 1:
            dist.gather_object(mine, got, dst=self._global_ranks[to], group=self.process_group)
        elif got is not None:
            got[0] = mine
        self._consolidated = consolidate_whole(got) if got is not None else None

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load an ordinary state dict of ``optimizer_class`` (consolidated from any world size, or
        a single process's); every rank loads the same dict and keeps its parameters' entries.
        Nothing is modified when it raises."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups'")
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": list(g["params"])}
                  for g in self.param_groups]  # fmt: skip
        scratch = self._cls(groups, **self._defaults_kw)  # (torch's loader checks sizes and casts)
        scratch.load_state_dict(state_dict)
        is_muon = issubclass(self._cls, ftorch.Muon)
        for gi, g in enumerate(scratch.param_groups):
            try:
                self._check_group(g)
            except (TypeError, ValueError) as e:
                raise type(e)(f"state_dict['param_groups'][{gi}]: {e}") from None
        for i, p in enumerate(self._params):
            entry = scratch.state.get(p)
            if not entry:
                continue
            want = {"momentum_buffer": tuple(p.shape)} if is_muon else dict(_adafactor.state_shapes(tuple(p.shape)))
            for key, shape in want.items():
                v = entry.get(key)
                if not isinstance(v, torch.Tensor) or tuple(v.shape) != shape:
                    got = f"shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else "missing" if v is None \
                        else type(v).__name__  # fmt: skip
                    raise ValueError(f"state_dict['state'][{i}][{key!r}] must be a tensor of shape {shape}, got {got}")
            if not is_muon and "step" not in entry:
                raise ValueError(f"state_dict['state'][{i}] has no 'step'")
        new_state: Dict[Any, Dict[str, Any]] = defaultdict(dict)
        for q, i in zip(self._proxies, self._owned):
            entry = scratch.state.get(self._params[i])
            if entry:
                new_state[q] = {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                for k, v in entry.items()}  # fmt: skip
        hypers = [{k: v for k, v in g.items() if k != "params"} for g in scratch.param_groups]
        # nothing raised: commit
        for g, h in zip(self.param_groups, hypers):
            g.update(h)
        if self.inner is not None:
            self.inner.state = new_state
        self._consolidated = None

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank (its parameters' entries)."""
        if self.inner is None:
            return 0
        return sum(int(v.nbytes) for st in self.inner.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor))  # fmt: skip


def consolidate_whole(shards: Sequence[Any]) -> Dict[str, Any]:
    """The ordinary state dict from every rank's :meth:`WholeParamZero.shard_state_dict` (any order)."""
    w, by_rank = check_shards(shards, WHOLE_FORMAT, "whole-parameter ZeroOptimizer")
    first = shards[0]
    layout = ("world_size", "owners", "shapes", "dtypes", "optimizer")
    for j, s in enumerate(shards):
        if any(s[k] != first[k] for k in layout):
            raise ValueError(f"shards[{j}] has another layout or optimizer than shards[0]")
    state: Dict[int, Dict[str, Any]] = {}
    for r in range(w):
        for i, entry in by_rank[r]["state"].items():
            if first["owners"][i] != r:
                raise ValueError(f"the shard of rank {r} has state for parameter {i}, owned by rank "
                                 f"{first['owners'][i]}")  # fmt: skip
            state[int(i)] = {k: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                             for k, v in entry.items()}  # fmt: skip
    return {"state": dict(sorted(state.items())), "param_groups": copy.deepcopy(first["param_groups"])}
