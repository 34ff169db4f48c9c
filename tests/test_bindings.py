"""The compiled module's calling convention agrees with the Python layer that calls it.

The functional layer passes the per-step scalars positionally (``*scalars, *grad_scalars``) for
speed, so the parameter names of each ``_core`` function must list the NamedTuple fields of
``fusedopt._scalars`` in the same order, right after the arrays (the algorithm's scalars, then
``GradScalars`` for the optimizer steps; the optimizer steps end with an optional ``plan`` and optional ``counters``).
"""

from __future__ import annotations

import re

import pytest

from fusedopt import _core, _scalars

_GRAD = list(_scalars.GradScalars._fields)  # every optimizer step takes them right after its own scalars

# the low-precision options (issue 13) end every optimizer step
_LOWP = ["masters", "stochastic_rounding", "seed", "sr_step", "absmax", "sr_offsets", "trust"]

CASES = [
    ("sgd", 3, _scalars.SgdScalars, _GRAD + ["nesterov", "maximize", "first_step", "threads", "plan", "counters"] + _LOWP),
    ("momentum", 3, _scalars.MomentumScalars, _GRAD + ["threads", "plan", "counters"] + _LOWP),
    ("rmsprop", 5, _scalars.RmspropScalars, _GRAD + ["maximize", "threads", "plan", "counters"] + _LOWP),
    ("adam", 5, _scalars.AdamScalars, _GRAD + ["maximize", "torch_exact", "threads", "plan", "counters"] + _LOWP),
    ("adagrad", 3, _scalars.AdagradScalars, _GRAD + ["maximize", "threads", "plan", "counters"] + _LOWP),
    ("lion", 3, _scalars.LionScalars, _GRAD + ["maximize", "threads", "plan", "counters"] + _LOWP),
    ("lamb", 4, _scalars.LambScalars, _GRAD + ["maximize", "adam", "threads", "plan", "counters"] + _LOWP),
    ("radam", 4, _scalars.RAdamScalars, _GRAD + ["maximize", "threads", "plan", "counters"] + _LOWP),
    ("nadam", 4, _scalars.NAdamScalars, _GRAD + ["maximize", "threads", "plan", "counters"] + _LOWP),
    ("lars", 3, _scalars.LarsScalars, _GRAD + ["maximize", "lars_adaptation", "threads", "plan", "counters"] + _LOWP),
    ("adamax", 4, _scalars.AdamaxScalars, _GRAD + ["maximize", "threads", "plan", "counters"] + _LOWP),
    ("muon", 4, _scalars.MuonScalars, _GRAD + ["nesterov", "apply", "threads", "plan", "counters"] + _LOWP),
    ("ema", 2, _scalars.EmaScalars, ["threads"]),
    ("adafactor", 5, _scalars.AdafactorScalars, ["has_wd", "maximize", "threads", "counters", "check_only"]),
]


def _parameter_names(fn: object) -> list[str]:
    doc = getattr(fn, "__doc__", "") or ""
    signature = doc.splitlines()[0]
    inside = signature[signature.index("(") + 1 : signature.rindex(")")]
    return re.findall(r"(\w+): ", inside)


@pytest.mark.parametrize(("name", "n_arrays", "scalars", "tail"), CASES, ids=[c[0] for c in CASES])
def test_positional_scalars_match_namedtuple(name: str, n_arrays: int, scalars: type, tail: list[str]) -> None:
    names = _parameter_names(getattr(_core, name))
    assert names[n_arrays:] == list(scalars._fields) + tail  # type: ignore[attr-defined]


@pytest.mark.parametrize(("name", "roles"), [
    ("sgd", ["params", "grads", "momentum_buffers"]),
    ("momentum", ["params", "grads", "velocities"]),
    ("rmsprop", ["params", "grads", "square_avgs", "grad_avgs", "momentum_buffers"]),
    ("adam", ["params", "grads", "exp_avgs", "exp_avg_sqs", "max_exp_avg_sqs"]),
    ("radam", ["params", "grads", "exp_avgs", "exp_avg_sqs"]),
    ("nadam", ["params", "grads", "exp_avgs", "exp_avg_sqs"]),
    ("lamb", ["params", "grads", "exp_avgs", "exp_avg_sqs"]),
    ("lars", ["params", "grads", "mus"]),
    ("adagrad", ["params", "grads", "state_sums"]),
    ("lion", ["params", "grads", "exp_avgs"]),
    ("adamax", ["params", "grads", "exp_avgs", "exp_infs"]),
    ("muon", ["params", "grads", "momentum_buffers", "updates"]),
    ("adafactor", ["params", "grads", "row_vars", "col_vars", "variances"]),
])  # fmt: skip
def test_role_names_lead_the_signature(name: str, roles: list[str]) -> None:
    """The bindings are generated from per-algorithm traits (register_optimizers.cpp): the role
    lists come first, under the names the error messages use."""
    assert _parameter_names(getattr(_core, name))[: len(roles)] == roles


def test_optional_roles_accept_none_and_required_ones_do_not() -> None:
    """Only the optional state roles (momentum_buffers, grad_avgs, max_exp_avg_sqs) take None."""
    import numpy as np

    p, g, m, v = (np.zeros(4, np.float32) for _ in range(4))
    s = _scalars.adam_scalars(step=1, lr=0.1, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                              decoupled_weight_decay=False)  # fmt: skip
    _core.adam([p], [g], [m], [v], None, *s, *_scalars.NO_GRAD_TRANSFORM, False, False, 1)
    with pytest.raises(TypeError):
        _core.adam([p], [g], [m], None, None, *s, *_scalars.NO_GRAD_TRANSFORM, False, False, 1)
    ls = _scalars.lion_scalars(lr=0.1, beta1=0.9, beta2=0.99, weight_decay=0.0)
    with pytest.raises(TypeError):
        _core.lion([p], [g], None, *ls, *_scalars.NO_GRAD_TRANSFORM, False, 1)


def test_traffic_probe_adds_scaled_read_stream_to_each_written_stream() -> None:
    """The benchmarks' bandwidth probe touches exactly its streams: x_k += scale*r."""
    import numpy as np

    r = np.arange(1000, dtype=np.float32)
    for n_written in (1, 2, 3, 4):
        ws = [np.full(1000, k, dtype=np.float32) for k in range(n_written)]
        _core._traffic_probe([[w] for w in ws], [r], 0.5, 2)
        for k, w in enumerate(ws):
            assert np.array_equal(w, np.float32(k) + np.float32(0.5) * r)
    with pytest.raises(ValueError, match="written"):
        _core._traffic_probe([], [r], 1.0, 1)
    w = np.zeros(1000, dtype=np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        _core._traffic_probe([[w], [w]], [r], 1.0, 1)
