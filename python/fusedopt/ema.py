"""``EMA``: exponential moving average of weights (Polyak averaging), one fused pass per update.

The average of each parameter array is kept in a state array of the same shape and dtype and
updated in place by one native call over all tensors (one parallel region, GIL released)::

    ema = fusedopt.EMA(opt.params, decay=0.999)      # after building the optimizer
    for batch in data:
        opt.step(grads)
        ema.update()
    with ema.average_parameters():                   # evaluate with the averaged weights
        evaluate(model)
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import numpy as np

from . import _core, _scalars, _threads
from . import _validation as check
from .arena import FlatParams

__all__ = ["EMA"]


class EMA:
    r"""Exponential moving average of parameter arrays, with optional bias correction.

    Update (:meth:`update`, the kernel's element-wise rule, specified bitwise by
    :func:`fusedopt.reference.ema`):

    .. math::
        a_t = \beta\, a_{t-1} + (1-\beta)\, \theta_t

    * ``bias_correction=True`` (Ng's exponentially weighted averages, the default): the averages
      start at :math:`a_0 = 0` and the value read out is :math:`\hat a_t = a_t / (1-\beta^t)`
      (:math:`1-\beta^t` in float64, rounded once to the dtype, one division per element). Before
      the first update (:math:`t = 0`) the read-out is the parameters' current values.
    * ``bias_correction=False`` (torch ``AveragedModel``/timm style): the averages start as a copy
      of the parameters, :math:`a_0 = \theta_0`, and are read out as they are.

    (Keras' ``use_ema`` copies the weights on the first update and then averages: that equals
    ``bias_correction=False`` built right before the first update.)

    Args:
        params: the parameter arrays (an array, a list of arrays, or a :class:`FlatParams` arena);
            float32/float64, C-contiguous, writeable; they are read by :meth:`update` and written
            only by :meth:`copy_to` / :meth:`average_parameters`.
        decay: :math:`\beta \in [0, 1)`.
        bias_correction: see above.
        threads: threads for :meth:`update` (``None``: the library's policy).

    Attributes:
        decay, bias_correction: as above; they may be changed between updates and are validated
            when set (an invalid value raises and changes nothing).
        step: :math:`t`, the number of updates so far (an int ``0 <= t <= 2**1023 - 2``, validated
            when set).
        averages: the raw averages :math:`a_t` (the state arrays themselves).
    """

    def __init__(
        self,
        params: Union[np.ndarray, FlatParams, Iterable[np.ndarray]],
        decay: float = 0.999,
        bias_correction: bool = True,
        *,
        threads: Optional[int] = None,
    ) -> None:
        if isinstance(params, FlatParams):
            params = [params.flat]
        elif isinstance(params, np.ndarray):
            params = [params]
        arrays = list(params)
        if not arrays:
            raise ValueError("params is empty: EMA needs at least one parameter")
        for i, a in enumerate(arrays):
            check.param_array(f"params[{i}]", a)
        check.no_overlap("params", arrays)
        self.decay = check.unit_interval("decay", decay)
        self.bias_correction = check.flag("bias_correction", bias_correction)
        self.threads = threads
        self._params: List[np.ndarray] = arrays
        self.averages: List[np.ndarray] = [np.zeros_like(a) if self.bias_correction else a.copy() for a in arrays]
        self.step = 0
        self._n = sum(int(a.size) for a in arrays)
        # one native call per dtype (float32 part first)
        self._calls = []
        for dt in (np.dtype(np.float32), np.dtype(np.float64)):
            idx = [i for i, a in enumerate(arrays) if a.dtype == dt]
            if idx:
                self._calls.append(([self.averages[i] for i in idx], [arrays[i] for i in idx]))

    @property
    def params(self) -> List[np.ndarray]:
        return list(self._params)

    @property
    def decay(self) -> float:
        return self._decay

    @decay.setter
    def decay(self, value: Any) -> None:
        self._decay = check.unit_interval("decay", value)

    @property
    def bias_correction(self) -> bool:
        return self._bias_correction

    @bias_correction.setter
    def bias_correction(self, value: Any) -> None:
        self._bias_correction = check.flag("bias_correction", value)

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: Any) -> None:
        self._step = check.stored_step("step", value, integers_only=True)

    def update(self) -> None:
        """One EMA step over every parameter (one fused native pass per dtype), then ``step += 1``.
        Everything is checked before the first array is written (a step count that cannot grow
        raises and changes nothing)."""
        if self._step >= check.MAX_STEP:
            check.steppable("step", self._step)  # raises naming step
        s = _scalars.ema_scalars(decay=self._decay)
        t = _threads.resolve(self.threads, self._n, "sgd")
        with _core.defer_interrupts:  # all or nothing under Ctrl-C: averages and step together
            for avgs, ps in self._calls:
                _core.ema(avgs, ps, *s, t)
            self._step += 1

    def _correction(self) -> Optional[float]:
        if not self.bias_correction:
            return None
        return 1.0 - self.decay**self.step

    def averaged(self) -> List[np.ndarray]:
        """New arrays holding the averaged weights (bias-corrected when enabled)."""
        c = self._correction()
        if c is None:
            return [a.copy() for a in self.averages]
        if self.step == 0:
            return [p.copy() for p in self._params]
        return [a / a.dtype.type(c) for a in self.averages]

    def copy_to(self, params: Optional[Iterable[np.ndarray]] = None) -> None:
        """Write the averaged weights into ``params`` (default: the tracked parameters), in place."""
        targets = self._params if params is None else list(params)
        if len(targets) != len(self._params):
            raise ValueError(f"params has {len(targets)} arrays but the EMA tracks {len(self._params)}")
        for i, (t, p) in enumerate(zip(targets, self._params)):
            check.param_array(f"params[{i}]", t)
            if t.shape != p.shape or t.dtype != p.dtype:
                raise ValueError(
                    f"params[{i}] has dtype {t.dtype} and shape {t.shape}, unlike the tracked {p.dtype} {p.shape}"
                )
        for t, v in zip(targets, self.averaged()):
            t[...] = v

    @contextlib.contextmanager
    def average_parameters(self) -> Iterator[None]:
        """Context manager: the tracked parameters hold the averaged weights inside the block and
        their own values (bitwise) again after it, also when the block raises."""
        backup = [p.copy() for p in self._params]
        self.copy_to()
        try:
            yield
        finally:
            for p, b in zip(self._params, backup):
                p[...] = b

    def state_dict(self) -> Dict[str, Any]:
        """``{"decay", "bias_correction", "step", "averages": [copies]}``."""
        return {
            "decay": self.decay,
            "bias_correction": self.bias_correction,
            "step": self.step,
            "averages": [a.copy() for a in self.averages],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict`; everything is checked first (nothing changes on error)."""
        if not isinstance(state_dict, Mapping):
            raise ValueError("state_dict must be a mapping")
        keys = {"decay", "bias_correction", "step", "averages"}
        missing = keys - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        unknown = set(state_dict) - keys
        if unknown:
            raise ValueError(f"state_dict has unknown key(s) {sorted(unknown)} for EMA")
        decay = check.unit_interval("decay", state_dict["decay"])
        bc = check.flag("bias_correction", state_dict["bias_correction"])
        try:
            step = check.stored_step("step", state_dict["step"], integers_only=True)
        except TypeError as exc:  # a state dict that does not fit is a ValueError, whatever the field
            raise ValueError(str(exc)) from None
        avgs = list(state_dict["averages"])
        if len(avgs) != len(self._params):
            raise ValueError(f"state_dict has {len(avgs)} averages but the EMA tracks {len(self._params)} parameters")
        for i, (a, p) in enumerate(zip(avgs, self._params)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"averages[{i}] must be a numpy.ndarray, got {type(a).__name__}")
            if a.shape != p.shape or a.dtype != p.dtype:
                raise ValueError(
                    f"averages[{i}] has dtype {a.dtype} and shape {a.shape}, unlike params[{i}] ({p.dtype} {p.shape})"
                )
        for mine, a in zip(self.averages, avgs):
            mine[...] = a
        self._decay, self._bias_correction, self._step = decay, bc, step

    def __repr__(self) -> str:
        return (
            f"EMA({len(self._params)} tensors, decay={self.decay}, bias_correction={self.bias_correction}, "
            f"step={self.step})"
        )
