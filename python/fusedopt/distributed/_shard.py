"""The sharding logic of ZeRO stage 1, NumPy only: layout, the exact global norm, the local step.

Nothing here imports torch. The collectives are behind :class:`Communicator` (four methods on
NumPy arrays); :class:`TorchCommunicator` runs them on a ``torch.distributed`` process group and
:class:`MPICommunicator` on an ``mpi4py`` communicator.

Layout (:func:`layout`). Parameters are packed per (param group, dtype) into one flat **bucket**,
each starting at a multiple of 16 elements (256 with 8-bit states: a block edge); rank ``r`` owns the element range ``[r*S, (r+1)*S)``
with ``S`` a multiple of :data:`ALIGN` (2048: the block of the deterministic norm, a multiple of
the 256-element block of the 8-bit states), and a parameter that crosses a rank boundary is
shifted so that the boundary falls on one of its 2048-element block edges: no norm block (nor
quantization block) straddles two ranks, at a cost of less than 2048 padding elements per rank
boundary. Padding elements are zero in the parameter and gradient buffers and reach no parameter.

Global norm, bitwise the single process's. :func:`fusedopt.functional.global_norm` sums squares
in float64 over 2048-element blocks of each tensor, then adds the block sums by a fixed pairwise
tree over all blocks in order (float32 tensors first, then float64 ones).
Adding each rank's partial sum would give another rounding; instead the tree is split at the
rank boundaries: every maximal subtree whose blocks one rank owns is computed by that rank (one
native ``sum_of_squares`` over the pieces of its tensors, which computes exactly that subtree),
the subtree sums travel in one float64 all-reduce (each rank writes its own slots, the others
are zero: a sum with zeros is exact) together with the ``found_inf`` flags, and every rank adds
them along the same tree. The result is bitwise :func:`fusedopt.functional.global_norm` of the
averaged gradients, so the clip coefficient and the skip decision are the single process's, on
every rank.

Trust ratios (LAMB, LARS), bitwise the single process's. The single native call sums p^2 and u^2
per 2048-element block of each tensor (the same blocks: no block straddles two ranks), adds each
tensor's block sums by a pairwise tree, and applies the ratio in a second pass. Here each rank
runs the first pass alone over its pieces (``trust=(1, sums)``: moments stored, parameters not
written), one float64 all-reduce gathers every tensor's block sums (each block from its one
owner, zeros elsewhere: exact), every rank adds a tensor's blocks by the same tree
(:func:`fusedopt.reference._tree_sum`) and runs the second pass with the totals
(``trust=(2, totals)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from .. import _core, _engine, _lowp, _scalars, _threads, reference
from .. import functional as F
from ..algorithms import FIRST_STEP, Algorithm
from ..reference import NORM_BLOCK

#: a rank's shard is a multiple of ALIGN elements and no ALIGN-element block of a parameter (counted
#: from its start) straddles two ranks: the norm's block, a multiple of the 8-bit states' 256
ALIGN = NORM_BLOCK
#: every parameter starts at a multiple of START_ALIGN elements (64 bytes or more)
START_ALIGN = 16

#: the dtypes of the norm's two sums, in the order the single-process norm adds them
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_F16 = np.dtype(np.float16)


def bucket_dtypes() -> Tuple[np.dtype, ...]:
    """The dtypes of buckets, in bucket order within a param group: float32, bfloat16 (when
    ml_dtypes is installed), float16, float64. A bfloat16/float16 gradient enters the norm as its
    exact float32 upcast (:func:`fusedopt.functional.global_norm`): in the float32 sum."""
    try:
        bf16: Tuple[np.dtype, ...] = (_lowp.bf16_dtype(),)
    except ImportError:
        bf16 = ()
    return (DTYPES[0], *bf16, _F16, DTYPES[1])


def is_lowp(dtype: np.dtype) -> bool:
    """Whether a bucket dtype is bfloat16 or float16."""
    return dtype == _F16 or _lowp.is_bf16(dtype)


def norm_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype of the norm's sum a bucket's gradients enter (float32 for bfloat16/float16)."""
    return DTYPES[1] if dtype == DTYPES[1] else DTYPES[0]


class Communicator(Protocol):
    """The collectives the sharded step needs, on NumPy arrays (C-contiguous, 1-D).

    Every rank calls the same methods in the same order with arrays of the same size and dtype.
    """

    rank: int
    world_size: int

    def reduce_scatter_sum(self, buf: np.ndarray) -> None:
        """In place: chunk ``r`` of ``buf`` (``buf.size / world_size`` elements) of rank ``r``
        becomes the elementwise sum of every rank's chunk ``r``; the other chunks are scratch
        (undefined afterwards)."""

    def all_gather(self, buf: np.ndarray) -> None:
        """In place: chunk ``r`` of ``buf`` (``buf.size / world_size`` elements) is rank ``r``'s
        input; afterwards every rank's ``buf`` holds every chunk."""

    def all_reduce_sum(self, buf: np.ndarray) -> None:
        """In place: the elementwise sum over ranks (float64 here)."""

    def gather(self, arr: np.ndarray, root: int) -> Optional[List[np.ndarray]]:
        """Every rank's ``arr`` (same size) at ``root`` (in rank order); None elsewhere."""


class TorchCommunicator:
    """:class:`Communicator` on a ``torch.distributed`` process group (gloo, or MPI: reduce and
    broadcast are all it needs). The arrays are shared with torch tensors (``torch.from_numpy``).

    Both exchanges are point-to-point: every ``isend``/``irecv`` posted at once, then waited for
    (gloo moves each on the caller's memory; its collectives into one tensor go through staging
    copies). The all-gather sends this rank's chunk to every other rank and receives theirs in
    place. The reduce-scatter sends chunk ``j`` to rank ``j`` and receives every rank's chunk
    ``r`` into a scratch buffer (each rank moves ``(W-1)/W`` of the buffer each way, half of what
    a ring all-reduce moves, and nothing to itself), then sums the ``W`` contributions in rank
    order (a fixed order, whatever the transport) into chunk ``r``. Measured here (2 ranks,
    47 MB, 1 thread each, medians of 11): all-reduce 35 ms, all-to-all 17.9 ms, the same without
    the self-copy 13.1 ms, two broadcasts 15.6 ms (14.5 ms posted together), gloo's
    ``all_gather_into_tensor`` 51 ms. A peer that dies or never posts its side makes the wait
    raise after the group's timeout."""

    def __init__(self, group: Any = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        #: the global rank of each rank of the group (reduce/broadcast take global ranks)
        self._global = [dist.get_global_rank(group, j) if group not in (None, dist.group.WORLD) else j
                        for j in range(self.world_size)]  # fmt: skip
        #: the all-to-all's receive buffer (per dtype, grown as needed, reused by every bucket)
        self._scratch: Dict[np.dtype, np.ndarray] = {}

    @staticmethod
    def _t(a: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(a)

    def _exchange(self, sends: List[Tuple[int, np.ndarray]], recvs: List[Tuple[int, np.ndarray]]) -> None:
        """Post every send and receive ((group rank, array)), then wait for all of them."""
        d = self._dist
        works = [d.isend(self._t(a), self._global[j], group=self.group) for j, a in sends]
        works += [d.irecv(self._t(a), self._global[j], group=self.group) for j, a in recvs]
        for work in works:
            work.wait()

    def reduce_scatter_sum(self, buf: np.ndarray) -> None:
        w, n, r = self.world_size, buf.size // self.world_size, self.rank
        if w == 1:
            return
        scratch = self._scratch.get(buf.dtype)
        if scratch is None or scratch.size < buf.size:
            scratch = self._scratch[buf.dtype] = np.empty(buf.size, dtype=buf.dtype)
        others = [j for j in range(w) if j != r]
        self._exchange([(j, buf[j * n : (j + 1) * n]) for j in others], [(j, scratch[j * n : (j + 1) * n]) for j in others])
        mine = buf[r * n : (r + 1) * n]
        if r >= 2:  # (the first add below writes into this rank's chunk before it is read)
            scratch[r * n : (r + 1) * n] = mine
        parts = [mine if j == r and r < 2 else scratch[j * n : (j + 1) * n] for j in range(w)]
        np.add(parts[0], parts[1], out=mine)  # (rank order: ((c0 + c1) + c2) + ...)
        for j in range(2, w):
            np.add(mine, parts[j], out=mine)

    def all_gather(self, buf: np.ndarray) -> None:
        w, n, r = self.world_size, buf.size // self.world_size, self.rank
        if w == 1:
            return
        others = [j for j in range(w) if j != r]
        self._exchange([(j, buf[r * n : (r + 1) * n]) for j in others], [(j, buf[j * n : (j + 1) * n]) for j in others])

    def all_reduce_sum(self, buf: np.ndarray) -> None:
        self._dist.all_reduce(self._t(buf), group=self.group)

    def gather(self, arr: np.ndarray, root: int) -> Optional[List[np.ndarray]]:
        d = self._dist
        dst = self._global[root]
        out = [np.empty_like(arr) for _ in range(self.world_size)] if self.rank == root else None
        d.gather(self._t(arr), None if out is None else [self._t(a) for a in out], dst=dst, group=self.group)
        return out


class MPICommunicator:
    """:class:`Communicator` on an ``mpi4py`` communicator (``MPI.COMM_WORLD`` by default):
    buffer-based ``Reduce_scatter_block``, ``Allgather`` (in place), ``Allreduce`` and ``Gather``."""

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI  # type: ignore[import-not-found,unused-ignore]

        self._mpi = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.world_size = int(self.comm.Get_size())

    def reduce_scatter_sum(self, buf: np.ndarray) -> None:
        n = buf.size // self.world_size
        out = np.empty(n, dtype=buf.dtype)
        self.comm.Reduce_scatter_block(buf, out, op=self._mpi.SUM)
        buf[self.rank * n : (self.rank + 1) * n] = out

    def all_gather(self, buf: np.ndarray) -> None:
        self.comm.Allgather(self._mpi.IN_PLACE, buf)

    def all_reduce_sum(self, buf: np.ndarray) -> None:
        self.comm.Allreduce(self._mpi.IN_PLACE, buf, op=self._mpi.SUM)

    def gather(self, arr: np.ndarray, root: int) -> Optional[List[np.ndarray]]:
        recv = np.empty((self.world_size, arr.size), dtype=arr.dtype) if self.rank == root else None
        self.comm.Gather(arr, recv, root=root)
        return None if recv is None else [recv[r] for r in range(self.world_size)]


# -- layout ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    """The parameters of one (param group, dtype), packed: parameter ``params[k]`` (its index in
    the optimizer's order over all groups) occupies ``[offsets[k], offsets[k] + sizes[k])``."""

    group: int
    dtype: np.dtype
    params: Tuple[int, ...]
    shapes: Tuple[Tuple[int, ...], ...]
    offsets: Tuple[int, ...]
    padded: int
    world_size: int
    sizes: Tuple[int, ...]

    @property
    def shard(self) -> int:
        """Elements per rank."""
        return self.padded // self.world_size

    def as_dict(self) -> Dict[str, Any]:
        return {"group": self.group, "dtype": self.dtype.name, "params": list(self.params),
                "shapes": [list(s) for s in self.shapes], "offsets": list(self.offsets), "padded": self.padded,
                "world_size": self.world_size}  # fmt: skip


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def layout(sizes: Sequence[int], world_size: int, start_align: int = START_ALIGN) -> Tuple[List[int], int]:
    """(offsets, shard size S) of parameters of these sizes packed in order: each starts at a
    multiple of :data:`START_ALIGN` elements; S is a multiple of :data:`ALIGN`; a parameter that
    crosses a rank boundary is moved forward (by less than ALIGN) so that the boundary falls on one
    of its ALIGN-element block edges. Then no norm block (nor 8-bit block) straddles two ranks,
    and the padding is at most ``ALIGN`` per rank boundary plus ``START_ALIGN`` per parameter."""
    need = sum(_round_up(n, start_align) for n in sizes)
    shard = max(_round_up(-(-need // world_size), ALIGN), ALIGN)
    while True:
        offsets, pos = [], 0
        for n in sizes:
            start = _round_up(pos, start_align)
            first = (start // shard + 1) * shard  # the first rank boundary after start
            if first < start + n and (first - start) % ALIGN:
                start += (first - start) % ALIGN  # (S is a multiple of ALIGN: every boundary is on an edge)
            offsets.append(start)
            pos = start + n
        if pos <= shard * world_size:
            return offsets, shard
        shard += ALIGN


def make_buckets(groups: Sequence[Sequence[Tuple[int, Tuple[int, ...], Any]]], world_size: int,
                 start_align: int = START_ALIGN) -> List[Bucket]:  # fmt: skip
    """Buckets for param groups given as lists of (index, shape, dtype): one per (group, dtype),
    groups in order, dtypes in :func:`bucket_dtypes` order, parameters in order within each, each
    starting at a multiple of ``start_align`` elements (8-bit states: 256, their block, so that the
    blocks of a shard are those of the parameters)."""
    out = []
    for g, items in enumerate(groups):
        for dt in bucket_dtypes():
            mine = [(i, tuple(int(d) for d in s)) for i, s, d in items if np.dtype(d) == dt]
            if not mine:
                continue
            sizes = tuple(math.prod(s) for _, s in mine)
            offsets, shard = layout(sizes, world_size, start_align)
            out.append(Bucket(g, dt, tuple(i for i, _ in mine), tuple(s for _, s in mine), tuple(offsets),
                              shard * world_size, world_size, sizes))  # fmt: skip
    return out


# -- the exact global norm ---------------------------------------------------------------------
Tree = Union[None, int, Tuple[Any, Any]]
#: (bucket, start, stop) -> the gradient of those shard elements (an array or CPU tensor)
GradOf = Callable[[int, int, int], Any]


def shard_grad_of(grad_shards: Sequence[Any]) -> GradOf:
    """:data:`GradOf` for gradient shards held whole (one array per bucket)."""
    return lambda b, s, e: grad_shards[b][s:e]


class NormPlan:
    """The single-process norm tree split at rank boundaries (see the module docstring).

    ``leaves[j] = (owner rank, dtype position, pieces)``, pieces ``(bucket index, start, stop)``
    in the owner's shard coordinates; ``trees[d]`` combines the leaf values of dtype ``DTYPES[d]``.
    """

    def __init__(self, buckets: Sequence[Bucket]) -> None:
        self.leaves: List[Tuple[int, int, List[Tuple[int, int, int]]]] = []
        self.trees: List[Tuple[int, Tree]] = []
        for d, dt in enumerate(DTYPES):
            blocks: List[Tuple[int, int, int]] = []  # (bucket, param position, block k)
            for b, bk in enumerate(buckets):
                if norm_dtype(bk.dtype) != dt:
                    continue
                for k, n in enumerate(bk.sizes):
                    blocks += [(b, k, j) for j in range(-(-n // NORM_BLOCK))]
            if not any(norm_dtype(bk.dtype) == dt for bk in buckets):
                continue
            owners = [(buckets[b].offsets[k] + j * NORM_BLOCK) // buckets[b].shard for b, k, j in blocks]
            self.trees.append((d, self._build(buckets, blocks, owners, d, 0, len(blocks))))

    def _build(self, buckets: Sequence[Bucket], blocks: List[Tuple[int, int, int]], owners: List[int],
               d: int, lo: int, hi: int) -> Tree:  # fmt: skip
        n = hi - lo
        if n <= 0:
            return None
        if self._one_owner(owners, lo, hi):  # (pieces of one rank in two buckets are fine: one list)
            owner = owners[lo]
            pieces: List[Tuple[int, int, int]] = []
            i = lo
            while i < hi:  # consecutive blocks of one parameter make one piece
                b, k, j0 = blocks[i]
                i2 = i
                while i2 + 1 < hi and blocks[i2 + 1][:2] == (b, k):
                    i2 += 1
                bk = buckets[b]
                j1 = blocks[i2][2] + 1
                start = bk.offsets[k] + j0 * NORM_BLOCK
                stop = bk.offsets[k] + min(j1 * NORM_BLOCK, bk.sizes[k])
                base = owner * bk.shard
                pieces.append((b, start - base, stop - base))
                i = i2 + 1
            self.leaves.append((owner, d, pieces))
            return len(self.leaves) - 1
        mid = lo + n // 2
        return (self._build(buckets, blocks, owners, d, lo, mid),
                self._build(buckets, blocks, owners, d, mid, hi))  # fmt: skip

    @staticmethod
    def _one_owner(owners: List[int], lo: int, hi: int) -> bool:
        first = owners[lo]
        return all(o == first for o in owners[lo:hi])

    def local_values(self, rank: int, grad_of: "GradOf", out: np.ndarray, threads: int) -> None:
        """Write this rank's leaf sums into ``out`` (zeros elsewhere); ``grad_of(b, s, e)`` is the
        gradient of bucket ``b``'s shard elements ``[s, e)`` (inside one parameter)."""
        out[: len(self.leaves)] = 0.0
        for j, (owner, _, pieces) in enumerate(self.leaves):
            if owner == rank:
                out[j] = _core.sum_of_squares(F._upcast_lowp([grad_of(b, s, e) for b, s, e in pieces]), threads)

    def total(self, values: np.ndarray) -> float:
        """The single process's float64 sum of squares from the all-reduced leaf values."""
        vals = [float(v) for v in values[: len(self.leaves)]]

        def ev(t: Tree) -> float:
            if t is None:
                return 0.0
            if isinstance(t, int):
                return vals[t]
            return ev(t[0]) + ev(t[1])

        sums = [ev(t) for _, t in self.trees]
        if len(sums) == 2:
            return sums[0] + sums[1]
        return sums[0] if sums else 0.0


# -- the local step ----------------------------------------------------------------------------
class GradOptions:
    """Validated gradient options of one step (the NumPy classes' ``step`` keywords)."""

    def __init__(self, grad_scale: Any, found_inf: Any, clip_value: Any, max_grad_norm: Any,
                 skip_if_nonfinite: Any) -> None:  # fmt: skip
        self.scale, self.value, self.max_norm, _, self.skip_nonfinite = F._check_grad_options(
            grad_scale, clip_value, max_grad_norm, None, skip_if_nonfinite
        )
        self.found_inf = F.found_inf_set(found_inf)
        self.given_found_inf = found_inf is not None
        self.grad_scale_given = grad_scale is not None

    @property
    def needs_exchange(self) -> bool:
        """Whether the step needs the all-reduce of the norm's partial sums and the flags."""
        return self.max_norm is not None or self.skip_nonfinite or self.given_found_inf


class ShardEngine:
    """The states of this rank's shards and the fused step on them (no parameters of its own:
    the caller passes the shard views of its buckets at every step)."""

    def __init__(self, algo: Algorithm, buckets: Sequence[Bucket], rank: int, threads: int,
                 master_kinds: Optional[Sequence[Optional[str]]] = None,
                 state_dtypes: Optional[Sequence[np.dtype]] = None, q8: Optional[Sequence[bool]] = None) -> None:  # fmt: skip
        self.algo = algo
        self.buckets = list(buckets)
        #: per bucket: the master of its (bfloat16/float16) parameters: "fp32" (a float32 copy of
        #: the shard), "split" (the uint16 low halves of the float32 masters of bfloat16
        #: parameters) or None
        self.master_kinds: List[Optional[str]] = list(master_kinds) if master_kinds is not None else [None] * len(buckets)
        for bk, kind in zip(self.buckets, self.master_kinds):
            if kind is not None and not is_lowp(bk.dtype):
                raise ValueError(f"a {bk.dtype.name} bucket has no master, got master kind {kind!r}")
        #: per bucket: the dtype of its state shards (fusedopt._lowp.state_kind; default: float32
        #: for bfloat16/float16 parameters, else the parameters' own)
        self.state_dtypes: List[np.dtype] = (list(state_dtypes) if state_dtypes is not None else
                                             [DTYPES[0] if is_lowp(bk.dtype) else bk.dtype for bk in self.buckets])
        #: per bucket: whether its states are 8-bit (uint8 codes in ``states``, the float32 absmax of
        #: each 256-element block of the shard in ``absmax``; the buckets then start every
        #: parameter on a block edge)
        self.q8: List[bool] = list(q8) if q8 is not None else [False] * len(self.buckets)
        self.absmax: List[Dict[str, np.ndarray]] = [{} for _ in self.buckets]
        #: per bucket: this rank's master shard (made from the parameter shard at its first step,
        #: the exact float32 upcast, or a zero trail, as fusedopt.torch makes a master), or None
        self.masters: List[Optional[np.ndarray]] = [None] * len(self.buckets)
        self.rank = rank
        self.threads = threads
        self.norm = NormPlan(self.buckets)
        #: per bucket: role.arg -> state shard (made at the first step, or with the parameters
        #: for states filled from a hyperparameter, as torch makes Adagrad's 'sum')
        self.states: List[Dict[str, np.ndarray]] = [{} for _ in self.buckets]
        #: per bucket: steps taken (all its parameters step together)
        self.counts: List[int] = [0] * len(self.buckets)
        #: per bucket: the per-parameter scalar states (NAdam's ``mu_product``: algorithm
        #: ``scalar_states``), one value for the bucket since its parameters step together; kept in
        #: ``scalar_dtypes[b]`` ("float32": torch's default scalar dtype, as a single fusedopt.torch
        #: optimizer keeps them; a loaded state keeps its own)
        self.scalars: List[Dict[str, float]] = [{s.key: s.init for s in algo.scalar_states} for _ in self.buckets]
        self.scalar_dtypes: List[str] = ["float32"] * len(self.buckets)
        self._exchange = np.zeros(len(self.norm.leaves) + 1, dtype=np.float64)
        #: the global norm of the unscaled gradients of the last step (when computed)
        self.last_norm: Optional[float] = None
        #: per bucket: whether its bfloat16 parameters are written with stochastic rounding (no
        #: master); the random bits of an element are keyed by its position in its parameter
        self.sr: List[bool] = [False] * len(self.buckets)
        #: per bucket: this rank's pieces of its parameters, (position k, start, stop) in shard
        #: coordinates, in order: the native calls of trust-ratio algorithms and of stochastic
        #: rounding take one array per piece
        self.own: List[List[Tuple[int, int, int]]] = []
        for bk in self.buckets:
            lo, hi = rank * bk.shard, (rank + 1) * bk.shard
            self.own.append([(k, max(lo, off) - lo, min(hi, off + n) - lo) for k, (off, n) in
                             enumerate(zip(bk.offsets, bk.sizes)) if max(lo, off) < min(hi, off + n)])  # fmt: skip
        #: trust-ratio algorithms: per bucket and parameter, the index of its first norm block in
        #: the step's exchange of block sums (every parameter of every bucket, in order)
        self._block_base: List[List[int]] = []
        nblocks = 0
        for bk in self.buckets:
            self._block_base.append([])
            for n in bk.sizes:
                self._block_base[-1].append(nblocks)
                nblocks += -(-n // NORM_BLOCK)
        self._block_sums = np.zeros(2 * nblocks if algo.trust_ratio else 0, dtype=np.float64)

    def ensure_states(self, b: int, h: Dict[str, Any]) -> List[Optional[np.ndarray]]:
        """The state shards of bucket ``b`` in role order (None for absent roles), made as needed."""
        bk, st = self.buckets[b], self.states[b]
        lists: List[Optional[np.ndarray]] = []
        for r in self.algo.states:
            if not r.present(h):
                lists.append(None)
                continue
            a = st.get(r.arg)
            if a is None and self.q8[b]:  # the code of 0 and absmax 0, or the encoded initial value
                if r.init_hyper is not None:
                    a, am = reference.q8_encode(np.full(bk.shard, h[r.init_hyper], dtype=np.float32), not r.nonneg)
                else:
                    a = np.full(bk.shard, reference.q8_map(not r.nonneg).zero, dtype=np.uint8)
                    am = np.zeros(reference.q8_blocks(bk.shard), dtype=np.float32)
                st[r.arg], self.absmax[b][r.arg] = a, am
            elif a is None:
                a = st[r.arg] = np.zeros(bk.shard, dtype=self.state_dtype(b))
                if r.init_hyper is not None:
                    a.fill(h[r.init_hyper])
            lists.append(a)
        return lists

    def state_dtype(self, b: int) -> np.dtype:
        """The dtype of bucket ``b``'s state shards (:attr:`state_dtypes`)."""
        return self.state_dtypes[b]

    def master_dtype(self, b: int) -> np.dtype:
        """The dtype of bucket ``b``'s master shard: float32 ("fp32") or uint16 ("split")."""
        return np.dtype(np.uint16) if self.master_kinds[b] == "split" else DTYPES[0]

    def ensure_master(self, b: int, params: Sequence[np.ndarray], pieces: Optional[Sequence[Tuple[int, int]]]) -> np.ndarray:
        """Bucket ``b``'s master shard, made from this rank's parameter pieces when it has none."""
        m = self.masters[b]
        if m is None:
            m = np.zeros(self.buckets[b].shard, dtype=self.master_dtype(b))
            if self.master_kinds[b] == "fp32":  # (a split master's trail starts at zero)
                for (a, e), x in zip(pieces if pieces is not None else [(0, m.size)], params):
                    m[a:e] = np.asarray(x).astype(np.float32)
            self.masters[b] = m
        return m

    def threads_for(self, n: int) -> int:
        return 1 if _threads.serial(n, self.algo.threads) else self.threads

    def decide(self, comm: Optional[Communicator], grad_of: GradOf, n: int,
               opts: GradOptions) -> Tuple[_scalars.GradScalars, bool]:  # fmt: skip
        """(gradient scalars, skip) of this step, the same on every rank: one float64 all-reduce
        of the norm's subtree sums and the ``found_inf`` flags when any option needs them
        (``grad_of``: this rank's gradient pieces, ``n`` elements in all)."""
        self.last_norm = None
        coef = 1.0
        if not opts.needs_exchange:
            return _scalars.GradScalars(opts.scale, coef, opts.value), False
        ex = self._exchange
        nleaf = len(self.norm.leaves)
        wants_norm = opts.max_norm is not None or opts.skip_nonfinite
        if wants_norm:
            self.norm.local_values(self.rank, grad_of, ex, self.threads_for(n))
        else:
            ex[:nleaf] = 0.0
        ex[nleaf] = 1.0 if opts.found_inf else 0.0
        if comm is not None and comm.world_size > 1:
            comm.all_reduce_sum(ex)
        if ex[nleaf] != 0.0:
            return _scalars.NO_GRAD_TRANSFORM, True
        if wants_norm:
            norm = math.sqrt(self.norm.total(ex)) / opts.scale
            self.last_norm = norm
            if opts.skip_nonfinite and not math.isfinite(norm):
                return _scalars.NO_GRAD_TRANSFORM, True
            if opts.max_norm is not None:
                coef = _scalars.clip_coef(norm, opts.max_norm)
        return _scalars.GradScalars(opts.scale, coef, opts.value), False

    def apply(self, hypers: Sequence[Dict[str, Any]], params: Sequence[Sequence[Any]], grads: Sequence[Sequence[Any]],
              gs: _scalars.GradScalars, pieces: Optional[Sequence[Sequence[Tuple[int, int]]]] = None,
              comm: Optional[Communicator] = None, sr_seeds: Optional[Sequence[int]] = None) -> None:  # fmt: skip
        """The fused step of every bucket's shard: ``hypers[b]`` are bucket ``b``'s validated
        functional hyperparameters; ``params[b]``/``grads[b]`` the pieces of its shard, elements
        ``pieces[b]`` (default: the whole shard, one piece), each piece in one native call per
        bucket. Every call is checked before the first writes (``_core.check``).

        A trust-ratio algorithm (LAMB, LARS) runs each phase alone (``trust=``): phase 1 over every
        bucket, one float64 all-reduce over ``comm`` of every tensor's block sums (each block on
        one rank: the others add zeros), then per tensor the pairwise tree of the single-process
        call over its blocks, and phase 2: bitwise the single process's step, on every rank.
        Stochastic rounding (``sr_seeds[b]``: bucket ``b``'s seed, for its buckets in
        :attr:`sr`) keys each element's bits by its position in its parameter (``sr_offsets=``)."""
        algo = self.algo
        calls = []
        news: List[Dict[str, float]] = []
        for b, h in enumerate(hypers):
            lists = self.ensure_states(b, h)
            t = self.counts[b] + 1
            new = {sc.key: algo.hyper(sc.key).check(sc.advance(h, t, self.scalars[b][sc.key], self.scalar_dtypes[b]),
                                                    f"{sc.key} after step {t}")
                   for sc in algo.scalar_states}  # fmt: skip
            news.append(new)
            h = {**h, **new}
            if not algo.has_step:  # (SGD): FIRST_STEP buffers are written by the first step
                fresh = self.counts[b] == 0 and any(r.init == FIRST_STEP and r.present(h) for r in algo.states)
                h = {**h, "first_step": fresh}
                t = 1
            p, g = list(params[b]), list(grads[b])
            ranges = None if pieces is None else list(pieces[b])
            split: Dict[str, Any] = {}
            if algo.trust_ratio or self.sr[b]:  # one array per piece of a parameter
                mine = [(a, e) for _, a, e in self.own[b]]
                if ranges is None:  # (the whole shard, one array: cut at the parameters)
                    p = [p[0][a:e] for a, e in mine] if p else []
                    g = [g[0][a:e] for a, e in mine] if g else []
                elif ranges != mine:
                    raise ValueError(f"bucket {b}: the pieces must be this rank's pieces of the parameters, in order")
                ranges = mine
                if self.sr[b]:
                    bk, base = self.buckets[b], self.rank * self.buckets[b].shard
                    split["sr_offsets"] = [base + a - bk.offsets[k] for k, a, _ in self.own[b]]
            if ranges is None:
                ls = [None if x is None else [x] for x in lists]
            else:
                ls = [None if x is None else [x[a:e] for a, e in ranges] for x in lists]
            roles = [("params", p, True), ("grads", g, False)]
            roles += [(r.arg, x, True) for r, x in zip(algo.states, ls) if x is not None]
            lowp: Tuple[Any, ...] = (None, False, 0, 0) if is_lowp(self.buckets[b].dtype) or self.q8[b] else ()
            if self.sr[b]:
                seed = 0 if sr_seeds is None else int(sr_seeds[b])
                lowp = (None, True, seed, self.counts[b] + 1)  # (the counter: the step count, kept by every class)
            if self.master_kinds[b] is not None and p:
                m = self.ensure_master(b, p, ranges)
                ms = [m] if ranges is None else [m[a:e] for a, e in ranges]
                roles.append(("masters", ms, True))
                lowp = (ms, False, 0, 0)
            am_lists: Optional[List[Optional[List[np.ndarray]]]] = None
            if self.q8[b]:  # (blocks of 256: every piece starts on a block edge)
                blk = reference.Q8_BLOCK
                am_lists = []
                for r, x in zip(algo.states, ls):
                    am = self.absmax[b].get(r.arg)
                    if x is None or am is None:
                        am_lists.append(None)
                    else:
                        am_lists.append([am] if ranges is None else [am[a // blk : -(-e // blk)] for a, e in ranges])
                lowp = (*lowp, am_lists)
            if p:
                _core.check(roles, lowp=True, stochastic_rounding=self.sr[b],  # (the absmax lists of the state roles given)
                            absmax=None if am_lists is None else [a for a, x in zip(am_lists, ls) if x is not None])
            calls.append((b, h, t, p, g, ls, lowp, split))
        if algo.trust_ratio:
            self._trust_phases(calls, gs, comm)
        else:
            for _, h, t, p, g, ls, lowp, split in calls:
                if p:  # (a rank whose part of a bucket is all padding has nothing to update)
                    _engine.native_call(algo, h, t, p, g, ls, self.threads_for(sum(int(x.shape[0]) for x in p)),
                                        grad=gs, lowp=lowp, **split)  # fmt: skip
        for b in range(len(calls)):
            self.counts[b] += 1
            self.scalars[b] = news[b]

    def _trust_phases(self, calls: List[Tuple[Any, ...]], gs: _scalars.GradScalars,
                      comm: Optional[Communicator]) -> None:  # fmt: skip
        """The two phases of a trust-ratio step over every bucket (see :meth:`apply`)."""
        algo, sums = self.algo, self._block_sums
        sums[:] = 0.0
        for b, h, t, p, g, ls, lowp, _ in calls:
            if not p:
                continue
            blocks = [-(-(e - a) // NORM_BLOCK) for _, a, e in self.own[b]]
            part = np.zeros(2 * sum(blocks), dtype=np.float64)
            threads = self.threads_for(sum(int(x.shape[0]) for x in p))
            _engine.native_call(algo, h, t, p, g, ls, threads, grad=gs, lowp=lowp, trust=(1, part))
            bk, base, j = self.buckets[b], self.rank * self.buckets[b].shard, 0
            for (k, a, _), m in zip(self.own[b], blocks):  # (a piece starts on a block edge of its parameter)
                first = self._block_base[b][k] + (base + a - bk.offsets[k]) // NORM_BLOCK
                sums[2 * first : 2 * (first + m)] = part[2 * j : 2 * (j + m)]
                j += m
        if comm is not None and comm.world_size > 1:
            comm.all_reduce_sum(sums)
        for b, h, t, p, g, ls, lowp, _ in calls:
            if not p:
                continue
            totals = np.empty(2 * len(p), dtype=np.float64)
            for i, (k, _, _) in enumerate(self.own[b]):
                first, m = self._block_base[b][k], -(-self.buckets[b].sizes[k] // NORM_BLOCK)
                for r in range(2):  # (the tree of trust.inl's single call over the tensor's blocks)
                    totals[2 * i + r] = reference._tree_sum(sums[2 * first + r : 2 * (first + m) : 2].tolist(), 0, m)
            threads = self.threads_for(sum(int(x.shape[0]) for x in p))
            _engine.native_call(algo, h, t, p, g, ls, threads, grad=gs, lowp=lowp, trust=(2, totals))
