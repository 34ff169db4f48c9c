"""The NumPy classes of the algorithms written by hand outside the engine's descriptions (Muon:
its Newton-Schulz products; Adafactor: its states are not shaped like the parameters): what they
share with a torch.optim-style class — param groups, ``params``, the gradient list,
``state_dict``/``load_state_dict`` in torch's layout — here once. A subclass sets ``NAME``,
``DEFAULTS`` (torch's param-group keys and defaults), :meth:`_check_hypers` and, where its parameters
or states differ, :meth:`_check_param` and :meth:`_load_param_state`; it writes ``step``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Dict, FrozenSet, List, Mapping

import numpy as np

from . import _validation as check

Hypers = Dict[str, Any]


class HandWrittenOptimizer:
    """Param groups (torch's rules: a list of arrays or of group dicts, missing hyperparameters
    from the defaults, unknown ones refused), one state dict per parameter, and torch's
    state-dict layout (``{"state": {i: {...}}, "param_groups": [{..., "params": [i...]}]}``; a
    loaded dict's tensors are copied into arrays of the parameter's dtype; everything is checked
    before anything changes)."""

    NAME: ClassVar[str] = ""
    DEFAULTS: ClassVar[Dict[str, Any]] = {}
    #: group keys a loaded state dict may omit (their defaults are used)
    OPTIONAL_KEYS: ClassVar[FrozenSet[str]] = frozenset()

    def _init_groups(self, defaults: Hypers, params: Any) -> None:
        self.defaults: Hypers = defaults
        self.param_groups: List[Dict[str, Any]] = []
        self._params: List[np.ndarray] = []
        self.state: List[Dict[str, Any]] = []
        #: native calls made by the last step
        self.last_native_calls = 0
        items = [params] if isinstance(params, np.ndarray) else list(params)
        if not items:
            raise ValueError("params is an empty list: an optimizer needs at least one parameter")
        if all(isinstance(x, Mapping) for x in items):
            for group in items:
                self.add_param_group(group)  # type: ignore[arg-type]
        elif any(isinstance(x, Mapping) for x in items):
            raise TypeError("params must be a list of arrays or a list of param-group dicts, not a mix")
        else:
            self.add_param_group({"params": items})

    def _check_hypers(self, h: Mapping[str, Any]) -> Hypers:
        """A param group's hyperparameters, checked (torch's messages)."""
        raise NotImplementedError

    def _check_param(self, name: str, a: Any) -> None:
        """A parameter array (TypeError/ValueError naming it)."""
        check.param_array(name, a)

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group of parameters with its own hyperparameters (missing ones: the defaults)."""
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError("param_group must be a dict with a 'params' entry")
        raw = param_group["params"]
        arrays = [raw] if isinstance(raw, np.ndarray) else list(raw)
        start = len(self._params)
        for i, a in enumerate(arrays):
            self._check_param(f"params[{start + i}]", a)
        unknown = set(param_group) - set(self.DEFAULTS) - {"params"}
        if unknown:
            raise ValueError(f"unknown hyperparameter(s) {sorted(unknown)} for {self.NAME}")
        group = self._check_hypers({k: param_group.get(k, v) for k, v in self.defaults.items()})
        check.no_overlap("params", self._params + arrays)
        group["params"] = list(range(start, start + len(arrays)))
        self.param_groups.append(group)
        self._params.extend(arrays)
        self.state.extend({} for _ in arrays)

    @property
    def params(self) -> List[np.ndarray]:
        """All parameter arrays, in the order ``step`` expects their gradients."""
        return list(self._params)

    def _grads(self, grads: Any) -> List[Any]:
        """``step``'s gradients as a list with one entry per parameter (``None``: skip it)."""
        out = [grads] if isinstance(grads, np.ndarray) else list(grads)
        if len(out) != len(self._params):
            raise ValueError(f"grads has {len(out)} entries but the optimizer has {len(self._params)} parameters")
        return out

    def state_dict(self) -> Dict[str, Any]:
        """A copy in torch.optim's layout (the class docstring names the state keys)."""
        state = {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
                 for i, st in enumerate(self.state) if st}  # fmt: skip
        groups = [{**{k: g[k] for k in self.DEFAULTS}, "params": list(g["params"])} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def _load_param_state(self, key: Any, st: Any, p: np.ndarray) -> Dict[str, Any]:
        """One parameter's loaded state, checked and converted (ValueError naming ``key``)."""
        raise NotImplementedError

    @staticmethod
    def _array(name: str, key: Any, a: Any, p: np.ndarray, shape: Any) -> np.ndarray:
        """A loaded state array (tensor or array) of ``shape``, copied into ``p``'s dtype."""
        a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
        if tuple(a.shape) != tuple(shape) or a.dtype.kind != "f":
            raise ValueError(f"{name} of parameter {key!r} must be a float array of shape {tuple(shape)}, "
                             f"got {a.dtype} {tuple(a.shape)}")  # fmt: skip
        return np.array(a, dtype=p.dtype, order="C")

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load :meth:`state_dict`'s layout (also torch.optim's: tensors are copied into arrays of
        the parameter's dtype). Everything is checked first; on error nothing changes."""
        if not isinstance(state_dict, Mapping) or "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError("state_dict must be a mapping with 'state' and 'param_groups'")
        groups_in = list(state_dict["param_groups"])
        if len(groups_in) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups_in)} param groups but the optimizer has "
                             f"{len(self.param_groups)}")  # fmt: skip
        index: Dict[Any, int] = {}
        new_groups = []
        for gi, (gin, mine) in enumerate(zip(groups_in, self.param_groups)):
            if not isinstance(gin, Mapping) or "params" not in gin:
                raise ValueError(f"state_dict['param_groups'][{gi}] must be a dict with 'params'")
            ids = list(gin["params"])
            if len(ids) != len(mine["params"]):
                raise ValueError(f"param group {gi} of state_dict has {len(ids)} parameters, the optimizer's has "
                                 f"{len(mine['params'])}")  # fmt: skip
            missing = set(self.DEFAULTS) - self.OPTIONAL_KEYS - set(gin)
            if missing:
                raise ValueError(f"param group {gi} of state_dict lacks {sorted(missing)}")
            hyper = self._check_hypers({k: gin.get(k, v) for k, v in self.DEFAULTS.items()})
            new_groups.append({**hyper, "params": list(mine["params"])})
            index.update(zip(ids, mine["params"]))
        states_in = state_dict["state"]
        if not isinstance(states_in, Mapping):
            raise ValueError("state_dict['state'] must be a dict")
        new_state: List[Dict[str, Any]] = [{} for _ in self._params]
        for key, st in states_in.items():
            if key not in index:
                raise ValueError(f"state_dict['state'] has an entry for unknown parameter {key!r}")
            i = index[key]
            new_state[i] = self._load_param_state(key, st, self._params[i])
        for group, new in zip(self.param_groups, new_groups):
            group.clear()
            group.update(new)
        self.state = new_state

    def __repr__(self) -> str:
        return f"{self.NAME}({len(self._params)} parameters, {len(self.param_groups)} groups, defaults={self.defaults})"
