"""How the native core reads torch tensors (cpp/bindings/arrays.cpp, issue 12 item 4).

* Dense tensors that are not C-contiguous (channels_last, any permutation of a contiguous tensor)
  are stepped in place as flat memory when the parameter, its gradient and its state share strides;
  different strides, and layouts that are not one dense non-overlapping block, are refused with
  nothing modified. NumPy arrays stay C-order only.
* Plain torch.Tensor / nn.Parameter objects are read through torch's DLPack C exchange table (a fast
  path); subclasses through torch's Python methods. Both give the same results and the same errors.
* Nothing is cached between calls: a tensor changed between two steps (``.data =``, ``set_()``, a
  storage resize, a dtype change, a new tensor at a freed one's id) is read afresh.
"""

from __future__ import annotations

import gc
from typing import List, Tuple

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fusedopt.torch  # noqa: E402  (registers torch's types with the core)
from fusedopt import _core, _scalars  # noqa: E402

S = _scalars.adam_scalars(step=3, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01,
                          decoupled_weight_decay=True)  # fmt: skip


def adam(p, g, m, v) -> None:
    _core.adam(p, g, m, v, None, *S, *_scalars.NO_GRAD_TRANSFORM, False, False, 1, None, None)


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy().view(np.uint32 if t.dtype == torch.float32 else np.uint64).copy()


def _values(shape: Tuple[int, ...], dtype=torch.float32, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g, dtype=dtype)
    grad = torch.randn(shape, generator=g, dtype=dtype)
    m = torch.randn(shape, generator=g, dtype=dtype) * 0.1
    v = torch.rand(shape, generator=g, dtype=dtype) * 0.1
    return [p, grad, m, v]


def _snapshot(ts) -> List[np.ndarray]:
    return [_bits(t) for t in ts]


class Sub(torch.Tensor):
    """A subclass: read through torch's Python methods (no fast path)."""


# --- dense non-C-contiguous layouts -------------------------------------------------------------

LAYOUTS = {
    "channels_last": (lambda t: t.to(memory_format=torch.channels_last), (8, 3, 5, 4)),
    "channels_last_size1": (lambda t: t.to(memory_format=torch.channels_last), (6, 4, 1, 1)),
    "transpose": (lambda t: t.t().contiguous().t(), (7, 9)),
    "permute3": (lambda t: t.permute(2, 0, 1).contiguous().permute(1, 2, 0), (3, 4, 5)),
    "channels_last_3d": (lambda t: t.to(memory_format=torch.channels_last_3d), (2, 3, 4, 2, 3)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("kind", ["fast", "subclass"])
def test_dense_layout_stepped_in_place_equals_contiguous_run(layout, dtype, kind):
    make, shape = LAYOUTS[layout]
    ref = _values(shape, dtype)
    ts = [make(x.clone()) for x in ref]
    if kind == "subclass":
        ts = [t.as_subclass(Sub) for t in ts]
    assert all(t.stride() == ts[0].stride() for t in ts)
    ptrs = [t.data_ptr() for t in ts]
    adam([ref[0]], [ref[1]], [ref[2]], [ref[3]])
    adam([ts[0]], [ts[1]], [ts[2]], [ts[3]])
    assert [t.data_ptr() for t in ts] == ptrs  # in place
    for got, want in zip(ts, ref):
        np.testing.assert_array_equal(_bits(got), _bits(want))  # bitwise, element by element


def test_dense_layout_mixed_with_contiguous_tensors_in_one_call():
    a = _values((4, 3, 2, 2), seed=1)
    b = _values((5, 7), seed=2)
    ra, rb = [x.clone() for x in a], [x.clone() for x in b]
    ta = [x.to(memory_format=torch.channels_last) for x in a]
    adam([ra[0], rb[0]], [ra[1], rb[1]], [ra[2], rb[2]], [ra[3], rb[3]])
    adam([ta[0], b[0]], [ta[1], b[1]], [ta[2], b[2]], [ta[3], b[3]])
    for got, want in zip(ta + b, ra + rb):
        np.testing.assert_array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("role", [1, 2, 3])
@pytest.mark.parametrize("param_layout", ["channels_last", "contiguous"])
def test_mismatched_strides_refused_naming_argument_and_strides(role, param_layout):
    ts = _values((4, 3, 2, 5))
    cl = [t.to(memory_format=torch.channels_last) for t in ts]
    if param_layout == "channels_last":
        ts = [cl[0]] + [cl[i] if i != role else ts[i] for i in (1, 2, 3)]
    else:
        ts = [ts[0]] + [ts[i] if i != role else cl[i] for i in (1, 2, 3)]
    before = _snapshot(ts)
    name = ["params", "grads", "exp_avgs", "exp_avg_sqs"][role]
    pattern = rf"{name}\[0\] has strides \({', '.join(map(str, ts[role].stride()))}\) but params\[0\] has strides"
    with pytest.raises(ValueError, match=pattern):
        adam([ts[0]], [ts[1]], [ts[2]], [ts[3]])
    for got, want in zip(_snapshot(ts), before):
        np.testing.assert_array_equal(got, want)  # nothing modified


def test_mismatch_in_a_later_tensor_modifies_nothing_in_earlier_ones():
    ok = _values((6,), seed=3)
    bad = [t.to(memory_format=torch.channels_last) for t in _values((2, 3, 2, 2), seed=4)]
    bad[3] = bad[3].contiguous()
    before = _snapshot(ok + bad)
    with pytest.raises(ValueError, match=r"exp_avg_sqs\[1\] has strides"):
        adam([ok[0], bad[0]], [ok[1], bad[1]], [ok[2], bad[2]], [ok[3], bad[3]])
    for got, want in zip(_snapshot(ok + bad), before):
        np.testing.assert_array_equal(got, want)


NOT_ONE_BLOCK = {
    "expanded": lambda: torch.ones(4, 1).expand(4, 6),
    "strided_slice": lambda: torch.zeros(4, 12)[:, ::2],
    "overlapping": lambda: torch.zeros(30).as_strided((4, 6), (3, 1)),
    "gap": lambda: torch.zeros(5, 8)[:, :6],
    "permuted_slice": lambda: torch.zeros(6, 5).t()[1:4, :],
}


@pytest.mark.parametrize("case", sorted(NOT_ONE_BLOCK))
@pytest.mark.parametrize("role", [0, 1, 2])
def test_layouts_that_are_not_one_dense_block_are_refused(case, role):
    bad = NOT_ONE_BLOCK[case]()
    ts = [torch.zeros(bad.shape) for _ in range(4)]
    ts[role] = bad
    before = _snapshot([t for t in ts if t is not bad])
    name = ["params", "grads", "exp_avgs"][role]
    with pytest.raises(ValueError, match=rf"{name}\[0\] is not contiguous \(strides"):
        adam([ts[0]], [ts[1]], [ts[2]], [ts[3]])
    for got, want in zip(_snapshot([t for t in ts if t is not bad]), before):
        np.testing.assert_array_equal(got, want)


def test_overlap_between_permuted_tensors_is_found():
    base = torch.zeros(2 * 3 * 4 * 4 + 8)
    p = base.as_strided((2, 3, 4, 4), (48, 1, 12, 3))  # channels_last over base
    m = base.as_strided((2, 3, 4, 4), (48, 1, 12, 3), 8)  # the same layout, 8 elements further
    g, v = torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last), torch.zeros(2, 3, 4, 4).to(
        memory_format=torch.channels_last
    )
    with pytest.raises(ValueError, match=r"exp_avgs\[0\] shares memory with params\[0\]"):
        adam([p], [g], [m], [v])


def test_check_overlap_uses_the_real_extent_of_strided_tensors():
    base = torch.zeros(20)
    read = base.as_strided((3,), (8,))  # elements 0, 8, 16: spans 17 elements, not 3
    written = base[10:12]
    with pytest.raises(ValueError, match=r"read\[0\] shares memory with written\[0\]"):
        _core.check_overlap([written], [read])
    _core.check_overlap([base[17:19]], [read])  # past its last element: no overlap


def test_storage_bounds_use_the_real_extent_of_a_permuted_tensor():
    t = torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last)
    others = [torch.zeros(2, 3, 4, 4).to(memory_format=torch.channels_last) for _ in range(3)]
    t.untyped_storage().resize_(t.numel() * 4 - 4)  # one element short
    with pytest.raises(ValueError, match=r"params\[0\] needs 384 bytes at byte offset 0 of its storage, which holds 380"):
        adam([t], *[[o] for o in others])


def test_numpy_arrays_stay_c_order_only_even_with_equal_strides():
    arrays = [np.asfortranarray(np.ones((4, 3), np.float32)) for _ in range(4)]
    with pytest.raises(ValueError, match=r"params\[0\] is not C-contiguous"):
        _core.adam(*[[a] for a in arrays], None, *S, *_scalars.NO_GRAD_TRANSFORM, False, False, 1, None, None)
    assert all((a == 1).all() for a in arrays)


# --- fast path and Python-method path agree; nothing is cached ----------------------------------


def _refusals():
    z = torch.randn(6, dtype=torch.complex64)
    return {
        "neg_view": (lambda: z.conj().imag, ValueError, "lazily negated"),
        "meta": (lambda: torch.zeros(6, device="meta"), ValueError, "CPU tensors only"),
        "sparse": (lambda: torch.zeros(6).to_sparse(), TypeError, "dense"),
        "int": (lambda: torch.zeros(6, dtype=torch.int32), TypeError, "dtype"),
        # (a float16 tensor is no longer refused: float16 params with float32 grads/states are a valid step)
        "float64_among_float32": (lambda: torch.zeros(6, dtype=torch.float64), TypeError, "dtype"),
        "storage_resized_to_0": (lambda: _resized(torch.zeros(6), 0), ValueError, "storage"),
        "storage_too_small": (lambda: _resized(torch.zeros(6), 20), ValueError, "storage"),
    }


def _resized(t: torch.Tensor, nbytes: int) -> torch.Tensor:
    t.untyped_storage().resize_(nbytes)
    return t


@pytest.mark.parametrize("case", sorted(_refusals()))
@pytest.mark.parametrize("role", [0, 1, 3])
@pytest.mark.parametrize("kind", ["fast", "subclass"])
def test_refusals_are_the_same_on_both_paths(case, role, kind):
    make, exc, match = _refusals()[case]
    bad = make()
    if kind == "subclass" and case == "sparse":
        pytest.skip("as_subclass needs a tensor with storage")
    if kind == "subclass":
        bad = bad.as_subclass(Sub)
    ts = [torch.ones(6) for _ in range(4)]
    ts[role] = bad
    name = ["params", "grads", "exp_avgs", "exp_avg_sqs"][role]
    keep = [t.clone() for t in ts if t is not bad]
    with pytest.raises(exc, match=match) as info:
        adam([ts[0]], [ts[1]], [ts[2]], [ts[3]])
    assert f"{name}[0]" in str(info.value)
    for got, want in zip([t for t in ts if t is not bad], keep):
        assert torch.equal(got, want)


def _step_pair(p: torch.Tensor) -> None:
    g, m, v = torch.full_like(p, 0.5), torch.zeros_like(p), torch.zeros_like(p)
    adam([p], [g], [m], [v])


def _expected_after(p0: torch.Tensor) -> torch.Tensor:
    q = p0.detach().clone().contiguous()
    _step_pair(q)
    return q


def test_data_swap_between_steps_is_read_afresh():
    p = torch.nn.Parameter(torch.ones(8))
    _step_pair(p)
    old = p.data
    new = torch.full((8,), 3.0)
    p.data = new  # same Python object, new storage; _version is not bumped
    want = _expected_after(new)
    _step_pair(p)
    assert torch.equal(p.detach(), want) and p.data_ptr() == new.data_ptr()
    assert torch.equal(old, _expected_after(torch.ones(8)))  # the old storage was left alone


def test_data_swap_to_a_view_of_the_same_memory_with_other_strides():
    base = torch.arange(12.0).reshape(3, 4)
    p = torch.nn.Parameter(base.clone())
    _step_pair(p)
    p.data = p.data.t()  # same data pointer, new shape and strides
    g, m, v = torch.ones(4, 3), torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"grads\[0\] has strides \(3, 1\) but params\[0\] has strides \(1, 4\)"):
        adam([p], [g], [m], [v])
    g, m, v = (t.t().contiguous().t() for t in (g, m, v))
    want = [t.detach().contiguous().clone() for t in (p, g, m, v)]
    adam(*[[t] for t in want])
    adam([p], [g], [m], [v])
    assert p.stride() == (1, 4) and torch.equal(p.detach(), want[0]) and torch.equal(m, want[2])


@pytest.mark.parametrize("kind", ["fast", "subclass"])
def test_data_swap_to_a_negated_view_of_the_same_memory_is_refused(kind):
    p = torch.nn.Parameter(torch.randn(5))
    if kind == "subclass":
        p = p.as_subclass(Sub)
    _step_pair(p)
    ptr, before = p.data_ptr(), p.detach().clone()
    p.data = p.data._neg_view()  # same memory, shape, strides and dtype; only the neg bit differs
    assert p.data_ptr() == ptr and p.is_neg()
    with pytest.raises(ValueError, match=r"params\[0\] is a lazily negated view"):
        _step_pair(p)
    assert torch.equal(p.detach().resolve_neg(), -before)  # nothing written


def test_set_between_steps_is_read_afresh():
    p = torch.ones(6)
    _step_pair(p)
    src = torch.full((10,), 2.0)
    with torch.no_grad():
        p.set_(src.untyped_storage(), 2, (6,), (1,))
    want = _expected_after(src[2:8])
    _step_pair(p)
    assert torch.equal(p, want) and torch.equal(src[2:8], want)
    assert torch.equal(src[:2], torch.full((2,), 2.0)) and torch.equal(src[8:], torch.full((2,), 2.0))


def test_storage_resize_between_steps_is_read_afresh():
    p = torch.ones(8)
    _step_pair(p)
    stepped = p.clone()
    p.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match=r"params\[0\] needs 32 bytes .* which holds 0 bytes"):
        _step_pair(p)
    p.untyped_storage().resize_(16)  # smaller than the tensor needs (maybe at the same address)
    with pytest.raises(ValueError, match=r"which holds 16 bytes"):
        _step_pair(p)
    p.untyped_storage().resize_(32)
    with torch.no_grad():
        p.copy_(stepped)
    want = _expected_after(stepped)
    _step_pair(p)
    assert torch.equal(p, want)


def test_dtype_change_between_steps_is_read_afresh():
    p = torch.nn.Parameter(torch.ones(4))
    _step_pair(p)
    p.data = p.data.double()
    g32 = torch.ones(4)
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype torch.float32 but params\[0\] has torch.float64"):
        adam([p], [g32], [torch.zeros(4, dtype=torch.float64)], [torch.zeros(4, dtype=torch.float64)])
    want = _expected_after(p.detach())
    _step_pair(p)
    assert p.dtype == torch.float64 and torch.equal(p.detach(), want)
    q = torch.ones(4, dtype=torch.float64)
    _step_pair(q)
    q.data = q.data.view(torch.int64)  # same object and memory, same shape: an integer tensor now
    with pytest.raises(TypeError, match=r"params\[0\] has dtype torch.int64"):
        adam([q], [torch.ones(4, dtype=torch.int64)], [torch.zeros(4)], [torch.zeros(4)])


def test_a_new_tensor_at_a_freed_tensors_address_is_read_afresh():
    seen = {}
    for i in range(40):  # freed objects' ids (and memory) are reused: each step sees the new tensor
        n = 4 + (i % 3) * 4
        p = torch.full((n,), float(i))
        key = id(p)
        want = _expected_after(p)
        _step_pair(p)
        assert torch.equal(p, want)
        seen[key] = seen.get(key, 0) + 1
        del p
        gc.collect()
    assert max(seen.values()) >= 2  # ids were in fact reused


def test_inference_tensors_are_read_on_both_paths():
    with torch.inference_mode():
        ts = _values((3, 4))
        ref = [t.clone() for t in ts]
        adam([ts[0]], [ts[1]], [ts[2]], [ts[3]])
        adam([ref[0].as_subclass(Sub)], [ref[1]], [ref[2]], [ref[3]])
        assert torch.equal(ts[0], ref[0])


def test_fast_path_and_subclass_path_agree_bitwise_on_a_model():
    shapes = [(16, 8), (8,), (4, 3, 3, 3), (2, 5, 7)]
    a = [_values(s, seed=i) for i, s in enumerate(shapes)]
    b = [[x.clone().as_subclass(Sub) for x in four] for four in a]
    adam(*[[four[r] for four in a] for r in range(4)])
    adam(*[[four[r] for four in b] for r in range(4)])
    for fa, fb in zip(a, b):
        for x, y in zip(fa, fb):
            np.testing.assert_array_equal(_bits(x), _bits(y.as_subclass(torch.Tensor)))


def test_optimizer_accepts_a_channels_last_parameter_at_construction():
    p = torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    fusedopt.torch.SGD([p], lr=0.1)  # a dense block: accepted (grad and state strides are checked per step)
    with pytest.raises(ValueError, match="not contiguous"):
        fusedopt.torch.SGD([torch.nn.Parameter(torch.zeros(4, 6)[:, ::2])], lr=0.1)


def test_sgd_channels_last_parameter_with_matching_grad_steps_in_place():
    p = torch.nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    q = torch.nn.Parameter(p.detach().clone().contiguous())
    p.grad = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    q.grad = p.grad.contiguous()
    ptr = p.data_ptr()
    fusedopt.torch.SGD([p], lr=0.1).step()  # no state: only param and grad
    fusedopt.torch.SGD([q], lr=0.1).step()
    assert p.data_ptr() == ptr and p.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(_bits(p), _bits(q))


# --- what torch's DLPack exchange export does not check (why the fast path still asks torch) -----


def _exchange_export(t: torch.Tensor):
    """torch's own C exchange export of t (managed and non-owning): (rc, flags, data) of each."""
    import ctypes

    class Dev(ctypes.Structure):
        _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]

    class DType(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]

    class DLTensor(ctypes.Structure):
        _fields_ = [("data", ctypes.c_void_p), ("device", Dev), ("ndim", ctypes.c_int32), ("dtype", DType),
                    ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p), ("byte_offset", ctypes.c_uint64)]  # fmt: skip

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]

    class Managed(ctypes.Structure):
        pass

    Managed._fields_ = [("version", Version), ("manager_ctx", ctypes.c_void_p),
                        ("deleter", ctypes.CFUNCTYPE(None, ctypes.POINTER(Managed))), ("flags", ctypes.c_uint64),
                        ("dl_tensor", DLTensor)]  # fmt: skip

    class Api(ctypes.Structure):
        _fields_ = [("version", Version), ("prev_api", ctypes.c_void_p), ("allocator", ctypes.c_void_p),
                    ("managed_from", ctypes.c_void_p), ("to_py", ctypes.c_void_p), ("dltensor_from", ctypes.c_void_p),
                    ("stream", ctypes.c_void_p)]  # fmt: skip

    capsule = getattr(torch.Tensor, "__dlpack_c_exchange_api__", None)
    if capsule is None:
        pytest.skip("torch has no DLPack C exchange table")
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    api = Api.from_address(get(capsule, b"dlpack_exchange_api"))
    if api.version.major != 1 or not api.managed_from or not api.dltensor_from:
        pytest.skip("unknown exchange table version")
    managed_from = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(ctypes.POINTER(Managed)))(
        api.managed_from
    )
    dltensor_from = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(DLTensor))(api.dltensor_from)
    out = ctypes.POINTER(Managed)()
    assert managed_from(t, ctypes.byref(out)) == 0
    flags, managed_data = out.contents.flags, out.contents.dl_tensor.data or 0
    out.contents.deleter(out)
    d = DLTensor()
    assert dltensor_from(t, ctypes.byref(d)) == 0
    return flags, managed_data, d.data or 0


def _shrunk_view() -> torch.Tensor:
    base = torch.zeros(100)
    v = base[50:]  # needs bytes [200, 400) of a storage that then holds 160 bytes
    base.untyped_storage().resize_(160)
    return v


def _emptied_view() -> torch.Tensor:
    base = torch.zeros(100)
    v = base[10:20]
    base.untyped_storage().resize_(0)
    return v


@pytest.mark.parametrize(
    "case, make, match",
    [
        ("neg_view", lambda: torch._neg_view(torch.ones(6)), "lazily negated"),
        ("storage_shrunk", _shrunk_view, "which holds 160 bytes"),
        ("storage_resized_to_0", _emptied_view, "which holds 0 bytes"),
    ],
)
@pytest.mark.parametrize("role", [0, 1])
def test_what_torchs_export_hands_out_unflagged_is_still_refused(case, make, match, role):
    # torch's exchange export (managed and non-owning) accepts these tensors, sets no DLPack flag and,
    # for a shrunk or emptied storage, hands out a pointer outside the storage; the core must
    # therefore keep asking torch for the neg bit and the storage bounds on its fast path.
    bad = make()
    flags, managed_data, data = _exchange_export(bad)
    assert flags == 0 and managed_data == data
    if case == "storage_resized_to_0":
        assert data == 10 * 4  # null storage + offset: a dangling pointer
    ts = [torch.ones(bad.shape) for _ in range(4)]
    ts[role] = bad
    keep = [t.clone() for t in ts if t is not bad]
    with pytest.raises(ValueError, match=match) as info:
        adam([ts[0]], [ts[1]], [ts[2]], [ts[3]])
    assert f"{['params', 'grads'][role]}[0]" in str(info.value)
    for got, want in zip([t for t in ts if t is not bad], keep):
        assert torch.equal(got, want)


def test_torchs_export_never_flags_read_only_or_copied():
    # DLPack 1.x flags (READ_ONLY = 1, IS_COPIED = 2) are 0 for every CPU tensor torch exports, even
    # one made from a read-only NumPy array: torch's own in-place ops write to such a tensor too, so
    # the core treats tensors as writeable (inference tensors are refused by fusedopt.torch).
    a = np.zeros(4, np.float32)
    a.flags.writeable = False
    with pytest.warns(UserWarning):
        from_ro = torch.from_numpy(a)
    with torch.inference_mode():
        inference = torch.zeros(4)
    for t in [torch.zeros(4), from_ro, inference, torch.zeros(4, 3).t()]:
        flags, managed_data, data = _exchange_export(t)
        assert flags == 0 and managed_data == data == t.data_ptr()


@pytest.mark.parametrize("kind", ["fast", "subclass"])
def test_lazily_cloned_tensors_are_materialized_before_the_write(kind):
    lazy_clone = getattr(torch, "_lazy_clone", None)
    if lazy_clone is None:
        pytest.skip("torch has no copy-on-write lazy clone")
    p0, g, m0, v0 = _values((5, 3))
    before = [p0.clone(), m0.clone(), v0.clone()]
    p, m, v = lazy_clone(p0), lazy_clone(m0), lazy_clone(v0)  # share p0's/m0's/v0's memory until written
    is_cow = getattr(torch._C, "_is_cow_tensor", None)
    if is_cow is not None:
        assert all(is_cow(t) for t in [p, m, v, p0])
    want = [t.clone() for t in before]
    adam([want[0]], [g], [want[1]], [want[2]])
    if kind == "subclass":
        p = p.as_subclass(Sub)
    adam([p], [g], [m], [v])
    for orig, b in zip([p0, m0, v0], before):
        assert torch.equal(orig, b)  # the sharers are untouched
    for got, w in zip([p, m, v], want):
        assert torch.equal(got.as_subclass(torch.Tensor), w)
