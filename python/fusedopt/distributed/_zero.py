"""``ZeroOptimizer``: ZeRO stage 1 over ``torch.distributed`` for the fusedopt.torch optimizers.

See :mod:`fusedopt.distributed` for the design; this module is the torch front-end of the
NumPy-only sharding logic in :mod:`fusedopt.distributed._shard`.
"""

from __future__ import annotations

import bisect
import copy
import datetime
import math
import os
import socket
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from .. import _lowp, _threads, reference
from .. import _validation as check
from .. import torch as ftorch
from ..algorithms import Algorithm
from ._shard import (
    START_ALIGN,
    Bucket,
    GradOptions,
    ShardEngine,
    TorchCommunicator,
    is_lowp,
    make_buckets,
    shard_grad_of,
)

#: the ``format`` entry of a shard state dict (:meth:`ZeroOptimizer.shard_state_dict`)
SHARD_FORMAT = "fusedopt.zero/1"

_TORCH_DTYPE: Dict[np.dtype, torch.dtype] = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                np.dtype(np.float16): torch.float16}
_LOWP_TORCH = (torch.bfloat16, torch.float16)


def _numpy_dtype(dt: torch.dtype) -> np.dtype:
    """The NumPy dtype of a parameter dtype (bfloat16: ml_dtypes')."""
    if dt == torch.bfloat16:
        return _lowp.bf16_dtype("bfloat16 parameters of ZeroOptimizer")
    for k, v in _TORCH_DTYPE.items():
        if v == dt:
            return k
    raise TypeError(f"no NumPy dtype for {dt}")


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.bfloat16 if _lowp.is_bf16(dt) else _TORCH_DTYPE[dt]


def _np(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a contiguous CPU tensor's memory, bfloat16 as ml_dtypes' bfloat16."""
    if t.dtype == torch.bfloat16:
        out: np.ndarray = t.view(torch.int16).numpy().view(_lowp.bf16_dtype())
        return out
    plain: np.ndarray = t.numpy()
    return plain


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A tensor sharing a NumPy array's memory (ml_dtypes' bfloat16 as torch.bfloat16)."""
    if _lowp.is_bf16(a.dtype):
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _raw(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of a tensor's memory for the collectives that only move it: bfloat16 as bytes
    (gloo takes neither int16 nor every bfloat16 collective)."""
    out: np.ndarray = t.view(torch.uint8).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


def _optimizer_classes() -> List[str]:
    out: Dict[Any, str] = {}
    for name in ftorch.__all__:
        c = getattr(ftorch, name, None)
        if isinstance(c, type) and issubclass(c, ftorch._FusedOptimizer) and hasattr(c, "_algo") and c not in out:
            out[c] = name
    return list(out.values())


def _check_optimizer_class(cls: Any) -> Algorithm:
    if not (isinstance(cls, type) and issubclass(cls, ftorch._FusedOptimizer) and hasattr(cls, "_algo")):
        name = getattr(cls, "__name__", type(cls).__name__)
        raise TypeError(f"optimizer_class must be one of fusedopt.torch's optimizers built on the algorithm registry "
                        f"({', '.join(_optimizer_classes())}), got {name}")  # fmt: skip
    algo: Algorithm = cls._algo
    return algo


def _probe_elementwise(cls: Any, defaults: Mapping[str, Any], group: Mapping[str, Any]) -> Optional[str]:
    """Why ``cls`` with this group's hyperparameters is not element-wise (None if it is): three
    steps of one 12-element tensor against the same values split in two tensors must agree
    bitwise, states included (an update that reads a norm, trust ratio or factored statistic of
    its tensor does not)."""
    gen = torch.Generator().manual_seed(1234)
    kw = {k: v for k, v in group.items() if k != "params"}
    whole = torch.randn(12, dtype=torch.float64, generator=gen)
    parts = [whole[:5].clone(), whole[5:].clone()]
    w = whole.clone()
    o1 = cls([{"params": [w], **kw}], **defaults)
    o2 = cls([{"params": parts, **kw}], **defaults)
    for _ in range(3):
        g = torch.randn(12, dtype=torch.float64, generator=gen)
        w.grad, parts[0].grad, parts[1].grad = g.clone(), g[:5].clone(), g[5:].clone()
        o1.step()
        o2.step()
    if not torch.equal(w, torch.cat(parts)):
        return "the update of an element depends on other elements of its tensor"
    scalar_keys = {s.key for s in cls._algo.scalar_states}
    for key, v in o1.state[w].items():
        if key == "step":
            continue
        if key in scalar_keys:  # one number per parameter (NAdam's mu_product): the same for every part
            if not all(torch.equal(v, o2.state[q][key]) for q in parts):
                return f"its per-parameter scalar state {key!r} depends on the tensor's elements"
            continue
        if not isinstance(v, torch.Tensor) or v.shape != w.shape:
            return f"its state {key!r} is not shaped like the parameter"
        if not torch.equal(v, torch.cat([o2.state[q][key] for q in parts])):
            return f"its state {key!r} depends on other elements of its tensor"
    return None


def _scalar_dtype_name() -> str:
    """The dtype of new per-parameter scalar states (NAdam's mu_product), as fusedopt.torch makes
    them: torch's default dtype when it is float64, else float32."""
    return "float64" if torch.get_default_dtype() == torch.float64 else "float32"


def _tensor_scalar(name: str, x: Any) -> Any:
    """A one-element tensor (GradScaler's scale and found_inf) as a float; anything else as it is."""
    if isinstance(x, torch.Tensor):
        if x.numel() != 1:
            raise ValueError(f"{name} must be a scalar or a one-element tensor, got shape {tuple(x.shape)}")
        return float(x.detach().reshape(()).item())
    return x


def _optimizer_group(process_group: Any, timeout: Optional[datetime.timedelta]) -> Any:
    """The group a ZeroOptimizer runs its collectives on: ``process_group`` (default: the default
    group), or with ``timeout`` a new gloo group over the same ranks with that timeout (collective)."""
    group = process_group if process_group is not None else dist.group.WORLD
    if timeout is not None:
        group = dist.new_group(ranks=dist.get_process_group_ranks(group), timeout=timeout, backend="gloo")
    return group


def check_shards(shards: Any, fmt: str, what: str) -> Tuple[int, Dict[int, Dict[str, Any]]]:
    """(world size, shard by rank) of a list holding every rank's shard state dict of format
    ``fmt`` once (TypeError/ValueError otherwise)."""
    if not isinstance(shards, (list, tuple)) or not shards:
        raise TypeError("shards must be a non-empty list of shard state dicts (one per rank)")
    for j, s in enumerate(shards):
        if not isinstance(s, dict) or s.get("format") != fmt:
            raise ValueError(f"shards[{j}] is not a {what} shard state dict (format {fmt!r})")
    w = shards[0]["world_size"]
    by_rank = {s["rank"]: s for s in shards}
    if len(shards) != w or sorted(by_rank) != list(range(w)):
        raise ValueError(f"shards must hold ranks 0 to {w - 1} once each (world size {w}), got ranks "
                         f"{sorted(s['rank'] for s in shards)}")  # fmt: skip
    return w, by_rank


def _default_threads(group: Any) -> int:
    """CPUs this process may run on, divided by the number of ranks of the group on this host."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 0:
        n_local = int(local)
    else:
        hosts: List[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(hosts, socket.gethostname(), group=group)
        n_local = max(1, hosts.count(socket.gethostname()))
    return max(1, min(_threads.MAX_THREADS, _threads._process_cpu_count() // n_local))


class ZeroOptimizer(torch.optim.Optimizer):  # type: ignore[misc,unused-ignore]
    """ZeRO stage 1: the state of a fusedopt.torch optimizer sharded by element ranges over the
    ranks of a ``torch.distributed`` process group (gloo; CPU tensors).

    ``ZeroOptimizer(params, optimizer_class=fusedopt.torch.AdamW, process_group=None, **defaults)``
    has ``torch.distributed.optim.ZeroRedundancyOptimizer``'s signature and methods: ``step(closure=None)``,
    ``param_groups`` (lr schedulers work), ``zero_grad``, ``consolidate_state_dict(to=0)`` then
    ``state_dict()`` on that rank, and ``load_state_dict`` (of an ordinary state dict of
    ``optimizer_class``, from any world size or a single process).

    Each (param group, dtype) is packed into one flat buffer (every parameter becomes a view into
    it, as ZeroRedundancyOptimizer's ``parameters_as_bucket_view=True``), padded so that every
    rank owns an equal range of whole 2048-element blocks (:mod:`fusedopt.distributed._shard`).
    A step:

    1. the gradients are copied into the flat gradient buffer (``None``: zeros, as DDP makes
       them) and **reduce-scattered** (summed; :class:`TorchCommunicator` does it with one
       in-place all-reduce, which gloo runs faster than its reduce-scatter; each rank then uses
       its own range, divided by the world size in the parameter's dtype: the averaged gradient
       is ``fl(sum / world_size)``); with ``reduce_grads=False`` the ``.grad`` are already
       averaged (DDP) and the step reads this rank's parts of them in place (no copy);
    2. with ``max_grad_norm``, ``skip_if_nonfinite`` or a ``found_inf``: one float64 all-reduce
       of the norm's per-rank subtree sums and the flags: the clip coefficient and the skip
       decision are the single process's, bitwise, on every rank;
    3. the fused step of ``optimizer_class``'s algorithm on this rank's shard only (one native
       call per bucket, ``threads`` OpenMP threads);
    4. an **all-gather** of the updated shards into every rank's parameters (``world_size``
       in-place broadcasts with gloo).

    Semantics to know: a ``.grad`` of ``None`` counts as zeros (DDP's convention; a single torch
    optimizer would skip that parameter); every rank must call ``step`` with the same kinds of
    options (``found_inf`` on all or none); a rank raising on bad input leaves the others in a
    collective until the group's timeout; the parameters' ``.data`` become views into the flat
    buffers; ``self.state`` stays empty (:meth:`state_bytes`, :meth:`shard_state_dict`).

    Args:
        params: parameters or param groups (CPU float32/float64, contiguous, dense; bfloat16/float16
            with ``master_weights``, below).
        optimizer_class: a fusedopt.torch optimizer class whose update is element-wise
            (``SGD``, ``Momentum``, ``RMSprop``, ``Adam``, ``AdamW``, ``Adagrad``, ``Adamax``,
            ``RAdam``, ``NAdam``, ``Lion``, and any later one that passes the check) or a trust
            ratio (``Lamb``, ``LARS``: float32/float64; each phase of the native step runs alone,
            with one float64 all-reduce of every tensor's 2048-element block sums of p^2 and u^2 in
            between, added per tensor by the single call's tree: bitwise the single process;
            LARS's ``weight_decay_filter``/``lars_adaptation_filter`` are refused: give the 1-D
            parameters a param group with ``weight_decay=0``/``lars_adaptation=False``).
            ``Muon`` and ``Adafactor`` (updates reading whole tensors) are sharded by whole
            parameters instead: the constructor returns a
            :class:`fusedopt.distributed._whole.WholeParamZero`. NAdam's per-parameter ``mu_product`` is kept once per
            (group, dtype) bucket (its parameters step together), in torch's scalar dtype;
            a loaded one keeps the dtype it was saved in (torch's own loader casts it to the
            parameter's dtype, so a float64 torch.optim.NAdam resumed from a checkpoint continues
            in float64: not bitwise the uninterrupted run; this one is).
        process_group: the group to shard over (default: the default group).
        reduce_grads: True (default): reduce-scatter the gradients here (use without DDP);
            False: the gradients are already averaged on every rank (DDP's all-reduce).
        max_grad_norm: clip by the global norm of all gradients (every group and dtype), as
            :meth:`fusedopt.Adam.step`'s ``max_grad_norm``; ``skip_if_nonfinite``: skip the step
            on every rank when that norm is NaN/inf; ``clip_value``: clamp each gradient element.
        threads: OpenMP threads of this rank's step (default: the CPUs this process may use
            divided by the ranks of the group on this host; ``OMP_NUM_THREADS``, which torchrun
            sets to 1, is deliberately not read).
        timeout: a ``datetime.timedelta``: the optimizer runs its collectives on a new gloo group
            over the same ranks with this timeout (``new_group`` is collective: every rank of the
            default group must construct the optimizer). Without it the group's own timeout
            bounds how long a rank waits for a dead peer.
        **defaults: ``optimizer_class``'s keyword arguments (``lr``, ``betas``, ...), among them
            ``master_weights="fp32"`` (or ``"split"``, bfloat16 only) for bfloat16/float16
            parameters: each rank keeps the float32 master (or the uint16 trail) of its shard only,
            made from the parameter shard at the first step as fusedopt.torch makes it, with float32
            states; the step updates the master and writes the parameter shard (round to nearest
            even), and the all-gather moves the low-precision parameters. Their gradients are summed
            in float32 (exact upcasts) and divided by the world size in float32, then rounded to the
            parameter's dtype: the averaged gradient is ``dtype(fl32(sum) / world_size)``, and a
            step is bitwise fusedopt.torch's class with the same option given that gradient
            (masters in the consolidated state dict under its keys). A master is not made again
            from a parameter changed outside ``step`` (fusedopt.torch's ``sync_masters``): load a
            state dict instead. The states have fusedopt.torch's dtypes (``state_dtype=None``,
            ``"float32"`` or ``"bfloat16"``; bfloat16/float16 parameters without a master keep
            states of their own dtype, as torch.optim). ``state_dtype="8bit"``: every parameter
            starts on a 256-element block edge of its bucket (instead of 16), so the shard's blocks
            (uint8 codes, one float32 absmax per block) are the single process's per-tensor blocks;
            ``min_8bit_size`` must not exceed the smallest float32/bfloat16/float16 parameter
            (ValueError: a smaller one would keep float32 states beside 8-bit ones in its bucket;
            give ``min_8bit_size=0``). ``stochastic_rounding=True`` (bfloat16 parameters without a
            master): an element's random bits are keyed by the group's seed, the step count and
            the element's position in its parameter; each rank gives the native call its pieces'
            positions (``sr_offsets``), so the bits are the single process's.
    """

    def __new__(cls, params: Any = None, optimizer_class: Any = ftorch.AdamW, *args: Any, **kwargs: Any) -> Any:
        """``fusedopt.torch.Muon`` and ``Adafactor`` (updates reading whole tensors) get a
        :class:`fusedopt.distributed._whole.WholeParamZero` (whole-parameter ownership)."""
        from ._whole import WholeParamZero, whole_param_class

        if cls is ZeroOptimizer and whole_param_class(optimizer_class):
            return object.__new__(WholeParamZero)
        return super().__new__(cls)

    def __init__(self, params: Any, optimizer_class: Any = ftorch.AdamW, process_group: Any = None, *,
                 reduce_grads: bool = True, max_grad_norm: Optional[float] = None, skip_if_nonfinite: bool = False,
                 clip_value: Optional[float] = None, threads: Optional[int] = None,
                 timeout: Optional[datetime.timedelta] = None, **defaults: Any) -> None:  # fmt: skip
        algo = _check_optimizer_class(optimizer_class)
        self._keep_options(reduce_grads, max_grad_norm, skip_if_nonfinite, clip_value, threads, timeout)
        params = list(params) if not isinstance(params, torch.Tensor) else [params]
        front = optimizer_class(params, **defaults)
        all_params: List[torch.Tensor] = [p for g in front.param_groups for p in g["params"]]
        for i, p in enumerate(all_params):
            if p.dtype not in (torch.float32, torch.float64, *_LOWP_TORCH):
                raise TypeError(f"params[{i}] has dtype {p.dtype}; ZeroOptimizer takes float32, float64, bfloat16 "
                                "and float16 parameters")  # fmt: skip
            if algo.trust_ratio and p.dtype in _LOWP_TORCH:
                raise TypeError(f"params[{i}] has dtype {p.dtype}; {optimizer_class.__name__} steps float32 and "
                                "float64 parameters only")  # fmt: skip
            if front.state_dtype == "8bit" and p.dtype != torch.float64 and p.numel() < front.min_8bit_size:
                raise ValueError(f"min_8bit_size={front.min_8bit_size} would keep float32 states for params[{i}] "
                                 f"({p.numel()} elements) beside 8-bit ones: ZeroOptimizer keeps one state format "
                                 "per param group and dtype; give min_8bit_size at most the smallest parameter's "
                                 "size (e.g. 0)")  # fmt: skip
            if p.device.type != "cpu" or p.layout != torch.strided:
                raise ValueError(f"params[{i}] must be a dense CPU tensor, got {p.device} {p.layout}")
            if not p.is_contiguous():
                raise ValueError(f"params[{i}] must be contiguous")
        for gi, g in enumerate(front.param_groups):
            if algo.trust_ratio:  # (per-tensor norms: the engine exchanges their block sums)
                for key in ("weight_decay_filter", "lars_adaptation_filter"):
                    if g.get(key):
                        raise ValueError(f"param_groups[{gi}]: {key}=True is not supported by ZeroOptimizer; put the "
                                         "1-D parameters in a param group of their own with weight_decay=0 "
                                         "(weight_decay_filter) or lars_adaptation=False (lars_adaptation_filter): "
                                         "the same update")  # fmt: skip
                continue
            why = _probe_elementwise(optimizer_class, defaults, g)
            if why is not None:
                raise ValueError(f"{optimizer_class.__name__} ({algo.name}) cannot be sharded by element ranges: "
                                 f"{why} (per-tensor norms, trust ratios or factored statistics); ZeroOptimizer "
                                 "supports element-wise updates only")  # fmt: skip
        front.state.clear()  # (Adagrad makes its state with the parameters: the shards hold it here)
        #: the wrapped optimizer: holds the param groups (hyperparameters, lr schedulers), never stepped
        self.optim = front
        self._algo = algo
        self._cls = optimizer_class
        self._initializing = True
        super().__init__(all_params, dict(front.defaults))
        self._initializing = False
        self.param_groups = front.param_groups
        self.defaults = front.defaults

        group = self.process_group = _optimizer_group(process_group, timeout)
        self._comm = TorchCommunicator(group)
        self.rank, self.world_size = self._comm.rank, self._comm.world_size
        self.threads = threads if threads is not None else _default_threads(group)
        self._params = all_params
        items = []
        index = 0
        for g in front.param_groups:
            items.append([(index + k, tuple(p.shape), _numpy_dtype(p.dtype)) for k, p in enumerate(g["params"])])
            index += len(g["params"])
        q8 = front.state_dtype == "8bit"
        self._buckets: List[Bucket] = make_buckets(items, self.world_size, reference.Q8_BLOCK if q8 else START_ALIGN)
        r = self.rank
        self._flat: List[torch.Tensor] = []
        self._flat_grad: List[torch.Tensor] = []
        self._grad_shard: List[torch.Tensor] = []
        #: per bucket: the gradient shard the step reads: the reduced shard itself, or for
        #: bfloat16/float16 parameters (reduced in float32) its rounding to their dtype
        self._grad_step: List[torch.Tensor] = []
        self._views: List[List[torch.Tensor]] = []
        with torch.no_grad():
            for bk in self._buckets:
                dt = _torch_dtype(bk.dtype)
                flat = torch.zeros(bk.padded, dtype=dt)
                views = []
                for k, i in enumerate(bk.params):
                    p = all_params[i]
                    v = flat[bk.offsets[k] : bk.offsets[k] + bk.sizes[k]].view(p.shape)
                    v.copy_(p)
                    p.data = v
                    views.append(v)
                self._flat.append(flat)
                self._views.append(views)
                if self._reduce_grads:  # reduced in place: this rank's chunk is its shard
                    rdt = torch.float32 if dt in _LOWP_TORCH else dt  # (low precision: summed in float32)
                    self._flat_grad.append(torch.zeros(bk.padded, dtype=rdt))
                    self._grad_shard.append(self._flat_grad[-1][r * bk.shard : (r + 1) * bk.shard])
                    self._grad_step.append(torch.zeros(bk.shard, dtype=dt) if dt in _LOWP_TORCH else self._grad_shard[-1])
                else:  # DDP mode: the kernel reads this rank's parts of the .grad tensors themselves
                    self._flat_grad.append(flat[:0])
                    self._grad_shard.append(flat[:0])
                    self._grad_step.append(flat[:0])
        #: reduce_grads: per bucket, (parameter index, 0, size, destination) of the gradient copies
        #: into the flat gradient buffer. DDP mode: per bucket, (parameter index, start, stop, shard
        #: start, shard stop) of each parameter's part in this rank's shard: the step reads those
        #: parts of the .grad tensors in place (no copy), with the matching pieces of the parameter
        #: and state shards (``_piece_params``, ``_piece_ranges``)
        self._pack: List[List[Tuple[int, int, int, torch.Tensor]]] = []
        self._pieces: List[List[Tuple[int, int, int, int, int]]] = []
        self._piece_params: List[List[np.ndarray]] = []
        self._piece_ranges: List[List[Tuple[int, int]]] = []
        for b, bk in enumerate(self._buckets):
            lo, hi = r * bk.shard, (r + 1) * bk.shard
            plan, pieces = [], []
            for k, i in enumerate(bk.params):
                off, n = bk.offsets[k], bk.sizes[k]
                if self._reduce_grads:
                    plan.append((i, 0, n, self._flat_grad[b][off : off + n]))
                elif max(lo, off) < min(hi, off + n):
                    a, e = max(lo, off), min(hi, off + n)
                    pieces.append((i, a - off, e - off, a - lo, e - lo))
            self._pack.append(plan)
            self._pieces.append(pieces)
            self._piece_params.append([_np(self._flat[b][lo + s : lo + e]) for _, _, _, s, e in pieces])
            self._piece_ranges.append([(s, e) for _, _, _, s, e in pieces])
        self._param_shards = [_np(f[r * bk.shard : (r + 1) * bk.shard]) for f, bk in zip(self._flat, self._buckets)]
        self._grad_shards = [_np(g) for g in self._grad_shard]
        self._step_grads = [_np(g) for g in self._grad_step]
        kinds = [front._master_kind(all_params[bk.params[0]]) if is_lowp(bk.dtype) else None for bk in self._buckets]
        sdts = [_numpy_dtype(front._state_dtype(all_params[bk.params[0]])) for bk in self._buckets]
        q8s = [q8 and bk.dtype != np.dtype(np.float64) for bk in self._buckets]
        self._engine = ShardEngine(algo, self._buckets, r, self.threads, kinds, sdts, q8s)
        self._engine.sr = [bool(front.stochastic_rounding) and _lowp.is_bf16(bk.dtype) and kind is None
                           for bk, kind in zip(self._buckets, kinds)]  # fmt: skip
        self._engine.scalar_dtypes = [_scalar_dtype_name()] * len(self._buckets)
        if any(role.init_hyper is not None for role in algo.states):  # made with the parameters, as torch
            for b, bk in enumerate(self._buckets):
                self._engine.ensure_states(b, front._group_plan(front.param_groups[bk.group])[0])
        self._consolidated: Optional[Dict[str, Any]] = None
        #: seconds of the last step's phases: pack (gradients into the flat buffers, the shard's
        #: division), reduce_scatter, norm_exchange (norm and flags), step (the fused update),
        #: all_gather
        self.last_timings: Dict[str, float] = {}
        #: steps skipped (found_inf, or a non-finite norm with skip_if_nonfinite), the same on every rank
        self.skipped_steps = 0

    def _keep_options(self, reduce_grads: Any, max_grad_norm: Any, skip_if_nonfinite: Any, clip_value: Any,
                      threads: Any, timeout: Any) -> None:  # fmt: skip
        """Check the constructor's keywords shared by both modes and keep the gradient options
        (the element-range mode here, :class:`fusedopt.distributed._whole.WholeParamZero`)."""
        self._reduce_grads = check.flag("reduce_grads", reduce_grads)
        GradOptions(None, None, clip_value, max_grad_norm, skip_if_nonfinite)  # validation only
        self.max_grad_norm = max_grad_norm
        self.skip_if_nonfinite = bool(skip_if_nonfinite)
        self.clip_value = clip_value
        if threads is not None:
            _threads._check_count("threads", threads)
        if timeout is not None and not isinstance(timeout, datetime.timedelta):
            raise TypeError(f"timeout must be a datetime.timedelta or None, got {type(timeout).__name__}")
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("ZeroOptimizer needs torch.distributed: call torch.distributed.init_process_group("
                               "backend='gloo', timeout=...) first")  # fmt: skip

    def _begin_step(self, closure: Optional[Callable[[], Any]], grad_scale: Any, found_inf: Any) -> Tuple[Any, GradOptions]:
        """(the closure's loss, the step's validated gradient options): the start of a step in both modes."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        opts = GradOptions(_tensor_scalar("grad_scale", grad_scale), _tensor_scalar("found_inf", found_inf),
                           self.clip_value, self.max_grad_norm, self.skip_if_nonfinite)  # fmt: skip
        return loss, opts

    # -- torch.optim.Optimizer surface -----------------------------------------------------------
    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        if getattr(self, "_initializing", False):
            super().add_param_group(param_group)
            return
        raise NotImplementedError("ZeroOptimizer.add_param_group: the flat shards are laid out at construction; "
                                  "give every param group to the constructor")  # fmt: skip

    @property
    def last_grad_norm(self) -> Optional[float]:
        """The global norm of the unscaled averaged gradients at the last step, when computed."""
        return self._engine.last_norm

    def step(self, closure: Optional[Callable[[], Any]] = None, *, grad_scale: Any = None,
             found_inf: Any = None) -> Any:  # fmt: skip
        """One step on every rank (a collective: every rank calls it with the same options).

        ``grad_scale`` (AMP unscaling, as the NumPy classes') and ``found_inf`` (this rank's AMP
        flag: any rank's nonzero flag skips the step on every rank) are optional.
        """
        loss, opts = self._begin_step(closure, grad_scale, found_inf)
        front = self.optim
        hypers = [front._group_plan(front.param_groups[bk.group])[0] for bk in self._buckets]
        grads = self._checked_grads()
        tm = self.last_timings = {"pack": 0.0, "reduce_scatter": 0.0, "norm_exchange": 0.0, "step": 0.0,
                                  "all_gather": 0.0}  # fmt: skip
        with torch.no_grad():
            self._load_grads(grads, tm)
        t0 = time.perf_counter()
        if self._reduce_grads:
            n = sum(int(bk.shard) for bk in self._buckets)
            gs, skip = self._engine.decide(self._comm, shard_grad_of(self._step_grads), n, opts)
        else:
            pieces = self._grad_pieces(grads)
            t1 = time.perf_counter()
            tm["pack"] += t1 - t0
            t0 = t1
            n = sum(e - s for rs in self._piece_ranges for s, e in rs)
            gs, skip = self._engine.decide(self._comm, self._piece_grad_of(pieces), n, opts)
        t1 = time.perf_counter()
        tm["norm_exchange"] = t1 - t0
        if skip:
            self.skipped_steps += 1
            return loss
        seeds = [_lowp.check_seed("param group 'seed'", front.param_groups[bk.group].get("seed", front.seed or 0))
                 if sr else 0 for bk, sr in zip(self._buckets, self._engine.sr)]  # fmt: skip
        if self._reduce_grads:
            self._engine.apply(hypers, [[p] for p in self._param_shards], [[g] for g in self._step_grads], gs,
                               comm=self._comm, sr_seeds=seeds)  # fmt: skip
        else:
            self._engine.apply(hypers, self._piece_params, pieces, gs, self._piece_ranges, comm=self._comm,
                               sr_seeds=seeds)  # fmt: skip
        t2 = time.perf_counter()
        tm["step"] = t2 - t1
        if self.world_size > 1:
            for flat in self._flat:
                self._comm.all_gather(_raw(flat))
        tm["all_gather"] = time.perf_counter() - t2
        # written through NumPy views of the flat buffers: advance the autograd version counters as
        # an in-place torch update does (a tensor saved for backward before this step then raises)
        torch._C._increment_version(self._params)
        return loss

    def _checked_grads(self) -> List[Optional[torch.Tensor]]:
        out: List[Optional[torch.Tensor]] = []
        for i, p in enumerate(self._params):
            g = p.grad
            if g is not None:
                if g.dtype != p.dtype:
                    raise TypeError(f"grads[{i}] has dtype {g.dtype} but params[{i}] has {p.dtype}")
                if g.shape != p.shape:
                    raise ValueError(f"grads[{i}] has shape {tuple(g.shape)} but params[{i}] has {tuple(p.shape)}")
                if g.device.type != "cpu" or g.layout != torch.strided:
                    raise ValueError(f"grads[{i}] must be a dense CPU tensor, got {g.device} {g.layout}")
            out.append(g)
        return out

    def _load_grads(self, grads: List[Optional[torch.Tensor]], tm: Dict[str, float]) -> None:
        """Pack the gradients into the flat buffers and reduce-scatter them (``tm``: seconds of the
        packing and of the collective, added)."""
        w = self.world_size
        t0 = time.perf_counter()
        for b, bk in enumerate(self._buckets):
            for k, i in enumerate(bk.params):  # a parameter whose .data was replaced is packed again
                p, v = self._params[i], self._views[b][k]
                if p.data_ptr() != v.data_ptr() or p.shape != v.shape:
                    v.copy_(p.reshape(v.shape))
                    p.data = v
            dsts, srcs = [], []
            for i, a, e, dst in self._pack[b]:  # (a, e): the part of parameter i this rank packs
                g = grads[i]
                if g is None:
                    dst.zero_()
                elif g.data_ptr() != dst.data_ptr() or a != 0:
                    dsts.append(dst)
                    srcs.append(g.reshape(-1)[a:e])
            if dsts:
                if self._flat_grad[b].dtype == self._flat[b].dtype:
                    torch._foreach_copy_(dsts, srcs)
                else:  # (bfloat16/float16 gradients into the float32 buffer: exact)
                    for dst, src in zip(dsts, srcs):
                        dst.copy_(src)
            if self._reduce_grads and w > 1:
                t1 = time.perf_counter()
                tm["pack"] += t1 - t0
                self._comm.reduce_scatter_sum(self._flat_grad[b].numpy())
                t0 = time.perf_counter()
                tm["reduce_scatter"] += t0 - t1
                shard = self._grad_shards[b]
                np.divide(shard, shard.dtype.type(w), out=shard)
            if self._reduce_grads and self._grad_step[b].dtype != self._grad_shard[b].dtype:
                self._grad_step[b].copy_(self._grad_shard[b])  # (float32 to bfloat16/float16: nearest even)
        tm["pack"] += time.perf_counter() - t0

    def _grad_pieces(self, grads: List[Optional[torch.Tensor]]) -> List[List[Any]]:
        """DDP mode: per bucket, this rank's part of each gradient (views; zeros for None)."""
        out = []
        for b in range(len(self._buckets)):
            row = []
            for i, a, e, _, _ in self._pieces[b]:
                g = grads[i]
                x = torch.zeros(e - a, dtype=self._flat[b].dtype) if g is None else g.reshape(-1)[a:e]
                row.append(_np(x.contiguous()) if x.dtype in _LOWP_TORCH else x)
            out.append(row)
        return out

    def _piece_grad_of(self, pieces: List[List[Any]]) -> Callable[[int, int, int], Any]:
        """The norm's view of the gradient pieces: shard elements [s, e) of bucket b."""
        starts = [[s for s, _ in rs] for rs in self._piece_ranges]

        def grad_of(b: int, s: int, e: int) -> Any:
            k = bisect.bisect_right(starts[b], s) - 1
            s0 = starts[b][k]
            return pieces[b][k][s - s0 : e - s0]

        return grad_of

    # -- checkpoints -----------------------------------------------------------------------------
    def shard_state_dict(self) -> Dict[str, Any]:
        """This rank's shard of the optimizer state with its layout (``torch.save`` it per rank;
        :func:`consolidate_state_dicts` of every rank's shard gives an ordinary state dict)."""
        buckets = []
        for b, bk in enumerate(self._buckets):
            d = bk.as_dict()
            roles = {r.arg: r.key for r in self._algo.states}
            d["state"] = {roles[arg]: _tensor(a.copy()) for arg, a in self._engine.states[b].items()}
            for arg, am in self._engine.absmax[b].items():  # (8-bit: one per 256-element block of the shard)
                d["state"][roles[arg] + _lowp.ABSMAX_SUFFIX] = torch.from_numpy(am.copy())
            d["qmaps"] = {roles[arg] + _lowp.QMAP_SUFFIX: torch.from_numpy(reference.q8_map(not r.nonneg).value.copy())
                          for r in self._algo.states for arg in [r.arg] if arg in self._engine.absmax[b]}  # fmt: skip
            m = self._engine.masters[b]
            if m is not None:  # (fusedopt.torch's keys: a float32 master, or the trail as int16)
                kind = self._engine.master_kinds[b]
                d["state"][_lowp.MASTER_KEY if kind == "fp32" else _lowp.TRAIL_KEY] = torch.from_numpy(
                    m.copy() if kind == "fp32" else m.view(np.int16).copy())
            d["step"] = self._engine.counts[b]
            d["scalars"] = dict(self._engine.scalars[b])  # (NAdam's mu_product: one value per bucket)
            d["scalar_dtype"] = self._engine.scalar_dtypes[b]
            buckets.append(d)
        groups = self.optim.state_dict()["param_groups"]
        return {"format": SHARD_FORMAT, "algorithm": self._algo.name, "world_size": self.world_size,
                "rank": self.rank, "has_step": bool(self.optim._HAS_STEP),
                "step_dtypes": [str(ftorch._step_dtype(g)).replace("torch.", "") for g in self.param_groups],
                "buckets": buckets, "param_groups": groups}  # fmt: skip

    def consolidate_state_dict(self, to: int = 0) -> None:
        """Gather every rank's shard on rank ``to`` of the group (a collective: every rank calls
        it); :meth:`state_dict` on that rank then returns the ordinary state dict."""
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < self.world_size:
            raise ValueError(f"to must be a rank of the group (0 to {self.world_size - 1}), got {to!r}")
        mine = self.shard_state_dict()
        shards: Optional[List[Dict[str, Any]]] = None
        if self.rank == to:
            shards = [copy.copy(mine) for _ in range(self.world_size)]
            for r, s in enumerate(shards):
                s["rank"] = r
                s["buckets"] = [dict(b, state=dict(b["state"])) for b in mine["buckets"]]
        for b, bd in enumerate(mine["buckets"]):
            for key in sorted(bd["state"]):
                t = bd["state"][key]
                got = self._comm.gather(t.view(torch.uint8).numpy(), to)  # (as bytes: gloo takes no int16)
                if shards is not None and got is not None:
                    for r in range(self.world_size):
                        shards[r]["buckets"][b]["state"][key] = torch.from_numpy(got[r]).view(t.dtype)
        self._consolidated = consolidate_state_dicts(shards) if shards is not None else None

    def state_dict(self) -> Dict[str, Any]:  # type: ignore[override,unused-ignore]
        """The ordinary state dict of ``optimizer_class`` made by the last
        :meth:`consolidate_state_dict` on this rank (RuntimeError elsewhere, as torch's ZeRO)."""
        if self._consolidated is None:
            raise RuntimeError("Optimizer state has not been consolidated on this rank: call "
                               "consolidate_state_dict(to=rank) on every rank first")  # fmt: skip
        return self._consolidated

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load an ordinary state dict of ``optimizer_class`` (consolidated from any world size,
        or from a single-process optimizer); every rank loads the same dict and keeps its shard.
        Nothing is modified when it raises."""
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise TypeError("state_dict must be a dict with 'state' and 'param_groups'")
        st = state_dict["state"]
        has_step = bool(self.optim._HAS_STEP)
        for bk in self._buckets:  # one step count per bucket: the same for all its parameters
            entries = [st.get(i) for i in bk.params]
            present = [e is not None and len(e) > 0 for e in entries]
            if any(present) and not all(present):
                raise ValueError(f"state_dict['state'] has state for some parameters of param group {bk.group} "
                                 f"({bk.dtype.name}) but not all: ZeroOptimizer steps them together")  # fmt: skip
            if has_step and all(present):
                steps = {float(e["step"]) if "step" in e else None for e in entries if e is not None}
                if len(steps) != 1 or None in steps:
                    raise ValueError(f"state_dict['state'] of param group {bk.group} ({bk.dtype.name}) has different "
                                     f"or missing 'step' values {sorted(map(str, steps))}: ZeroOptimizer keeps one "
                                     "step count per param group and dtype")  # fmt: skip
            if all(present):
                for sc in self._algo.scalar_states:
                    vals = {(float(e[sc.key]), str(e[sc.key].dtype)) if isinstance(e[sc.key], torch.Tensor)
                            else (float(e[sc.key]), "") for e in entries if e is not None and sc.key in e}  # fmt: skip
                    if len(vals) > 1:
                        raise ValueError(f"state_dict['state'] of param group {bk.group} ({bk.dtype.name}) has different "
                                         f"{sc.key!r} values {sorted(vals)}: ZeroOptimizer keeps one per param group "
                                         "and dtype")  # fmt: skip
        front = self.optim
        groups = front.param_groups
        front.load_state_dict(state_dict)
        for old, loaded in zip(groups, front.param_groups):  # (torch's loader makes new group dicts: keep
            old.clear()  # the ones self.param_groups and the user's lr schedulers hold, updated)
            old.update(loaded)
        front.param_groups = groups
        try:
            r = self.rank
            new_states: List[Dict[str, np.ndarray]] = []
            counts: List[int] = []
            scalars: List[Dict[str, float]] = []
            scalar_dtypes: List[str] = []
            masters: List[Optional[np.ndarray]] = []
            absmaxes: List[Dict[str, np.ndarray]] = []
            for b, bk in enumerate(self._buckets):
                h = front._group_plan(front.param_groups[bk.group])[0]
                states: Dict[str, np.ndarray] = {}
                q8_absmax: Dict[str, np.ndarray] = {}
                count = 0
                p0 = self._params[bk.params[0]]
                loaded = front.state.get(p0)
                sc_values = {sc.key: sc.init for sc in self._algo.scalar_states}
                sc_dtype = _scalar_dtype_name()
                if loaded:
                    if has_step:
                        count = int(float(loaded["step"]))
                    for sc in self._algo.scalar_states:  # (the loader checked them; equal in the bucket, above)
                        sc_values[sc.key] = float(loaded[sc.key])
                        # the dtype it was saved in (torch's loader casts it to the parameter's dtype, so
                        # a float64 model would continue in float64): a resumed run continues bitwise
                        raw = st[bk.params[0]][sc.key]
                        sc_dtype = "float64" if getattr(raw, "dtype", None) == torch.float64 else "float32"
                    for role in self._algo.states:
                        if not role.present(h) or role.key not in loaded:
                            continue
                        if self._engine.q8[b]:
                            codes, am = self._load_q8(b, role.key, front.state)
                            states[role.arg], q8_absmax[role.arg] = codes, am
                            continue
                        a = np.zeros(bk.shard, dtype=self._engine.state_dtype(b))
                        lo, hi = r * bk.shard, (r + 1) * bk.shard
                        for k, i in enumerate(bk.params):
                            s, e = max(lo, bk.offsets[k]), min(hi, bk.offsets[k] + bk.sizes[k])
                            if s < e:
                                src = _np(front.state[self._params[i]][role.key].detach().reshape(-1))
                                a[s - lo : e - lo] = src[s - bk.offsets[k] : e - bk.offsets[k]]
                        states[role.arg] = a
                    if not has_step and states:
                        count = 1
                kind = self._engine.master_kinds[b]
                master: Optional[np.ndarray] = None
                if kind is not None and loaded:  # (a master not in the dict: made from the parameter, as
                    # fusedopt.torch makes it after loading; this rank's parameter shard is the same)
                    key = _lowp.MASTER_KEY if kind == "fp32" else _lowp.TRAIL_KEY
                    master = np.zeros(bk.shard, dtype=self._engine.master_dtype(b))
                    lo, hi = r * bk.shard, (r + 1) * bk.shard
                    for k, i in enumerate(bk.params):
                        s, e = max(lo, bk.offsets[k]), min(hi, bk.offsets[k] + bk.sizes[k])
                        if s >= e:
                            continue
                        got = front.state[self._params[i]].get(key)
                        if got is not None:
                            src = got.detach().reshape(-1).numpy().view(master.dtype)
                        elif kind == "fp32":
                            src = _np(self._params[i].detach().reshape(-1)).astype(np.float32)
                        else:
                            src = np.zeros(bk.sizes[k], dtype=master.dtype)
                        master[s - lo : e - lo] = src[s - bk.offsets[k] : e - bk.offsets[k]]
                masters.append(master)
                new_states.append(states)
                absmaxes.append(q8_absmax)
                counts.append(count)
                scalars.append(sc_values)
                scalar_dtypes.append(sc_dtype)
        finally:
            front.state.clear()
        self._engine.states = new_states
        self._engine.counts = counts
        self._engine.scalars = scalars
        self._engine.scalar_dtypes = scalar_dtypes
        self._engine.masters = masters
        self._engine.absmax = absmaxes
        for b, bk in enumerate(self._buckets):
            if not new_states[b] and any(role.init_hyper is not None for role in self._algo.states):
                self._engine.ensure_states(b, front._group_plan(front.param_groups[bk.group])[0])
        self._consolidated = None

    def _load_q8(self, b: int, key: str, state: Any) -> Tuple[np.ndarray, np.ndarray]:
        """This rank's shard of the loaded 8-bit state ``key`` of bucket ``b``: (codes, absmax);
        padding holds the code of 0 and absmax 0, as a new state."""
        bk, r, blk = self._buckets[b], self.rank, reference.Q8_BLOCK
        role = next(x for x in self._algo.states if x.key == key)
        codes = np.full(bk.shard, reference.q8_map(not role.nonneg).zero, dtype=np.uint8)
        am = np.zeros(reference.q8_blocks(bk.shard), dtype=np.float32)
        lo, hi = r * bk.shard, (r + 1) * bk.shard
        for k, i in enumerate(bk.params):
            s, e = max(lo, bk.offsets[k]), min(hi, bk.offsets[k] + bk.sizes[k])
            if s >= e:
                continue
            st = state[self._params[i]]
            src = st[key].detach().reshape(-1).numpy()
            codes[s - lo : e - lo] = src[s - bk.offsets[k] : e - bk.offsets[k]]
            a0, a1 = (s - bk.offsets[k]) // blk, -(-(e - bk.offsets[k]) // blk)  # (s: a block edge of both)
            am[(s - lo) // blk : (s - lo) // blk + a1 - a0] = st[key + _lowp.ABSMAX_SUFFIX].detach().reshape(-1).numpy()[a0:a1]
        return codes, am

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank (its shards)."""
        return (sum(int(a.nbytes) for st in self._engine.states for a in st.values())
                + sum(int(a.nbytes) for st in self._engine.absmax for a in st.values())
                + sum(int(m.nbytes) for m in self._engine.masters if m is not None))


def consolidate_state_dicts(shards: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One ordinary state dict of the wrapped optimizer from every rank's
    :meth:`ZeroOptimizer.shard_state_dict` (any order): loadable by a single-process
    fusedopt.torch optimizer, by ``torch.optim``'s optimizer of the same algorithm, and by a
    :class:`ZeroOptimizer` of any world size. (The offline tool, as DeepSpeed's ``zero_to_fp32``.)"""
    from ._whole import WHOLE_FORMAT, consolidate_whole  # (whole-parameter shards: Muon, Adafactor)

    if isinstance(shards, (list, tuple)) and any(isinstance(s, dict) and s.get("format") == WHOLE_FORMAT for s in shards):
        return consolidate_whole(shards)
    w, by_rank = check_shards(shards, SHARD_FORMAT, "ZeroOptimizer")
    skip = ("state", "step", "scalars", "scalar_dtype", "qmaps")
    layout = [{k: v for k, v in b.items() if k not in skip} for b in shards[0]["buckets"]]
    for s in shards:
        other = [{k: v for k, v in b.items() if k not in skip} for b in s["buckets"]]
        if other != layout or s["world_size"] != w or s["algorithm"] != shards[0]["algorithm"]:
            raise ValueError(f"shards[{shards.index(s)}] has another layout or algorithm than shards[0]")
    state: Dict[int, Dict[str, Any]] = {}
    first = by_rank[0]
    for b, lay in enumerate(layout):
        bd = first["buckets"][b]
        keys = sorted(bd["state"])
        count = int(bd["step"])
        if count == 0 and not keys:
            continue
        full = {key: torch.cat([by_rank[r]["buckets"][b]["state"][key].reshape(-1) for r in range(w)]) for key in keys}
        step_dtype = getattr(torch, first["step_dtypes"][lay["group"]])
        for k, i in enumerate(lay["params"]):
            n, off = math.prod(lay["shapes"][k]), lay["offsets"][k]
            entry: Dict[str, Any] = {}
            if first["has_step"]:
                entry["step"] = torch.tensor(float(count), dtype=step_dtype)
            for key in keys:
                if key.endswith(_lowp.ABSMAX_SUFFIX):  # (8-bit: the parameter starts on a block edge)
                    blk = reference.Q8_BLOCK
                    entry[key] = full[key][off // blk : off // blk + reference.q8_blocks(n)].clone()
                else:
                    entry[key] = full[key][off : off + n].reshape(lay["shapes"][k]).clone()
            for key, q in bd.get("qmaps", {}).items():
                entry[key] = q.clone()
            if count:
                for key, v in bd.get("scalars", {}).items():
                    entry[key] = torch.tensor(v, dtype=getattr(torch, bd["scalar_dtype"]))
            if entry:
                state[i] = entry
    return {"state": dict(sorted(state.items())), "param_groups": copy.deepcopy(first["param_groups"])}
