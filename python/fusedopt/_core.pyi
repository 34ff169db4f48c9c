"""Stub of the compiled module fusedopt._core (cpp/bindings). Private: use fusedopt.functional."""

from types import TracebackType
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

__version__: str
openmp_enabled: bool
compiler: str

_Arrays = Sequence[np.ndarray]
#: step counters a step call advances after its kernel ran (cpp/bindings/arrays.hpp, Counters):
#: dicts whose 'step' is an int, or one-element float32/float64 arrays / CPU tensors
_Counters = Optional[Sequence[Union[dict[str, Any], np.ndarray, Any]]]

max_threads: int

class _DeferInterrupts:
    """SIGINT inside the block is delivered when the outermost block exits (cpp/bindings/signals.cpp)."""

    def __enter__(self) -> None: ...
    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> bool: ...

defer_interrupts: _DeferInterrupts

def check(
    roles: Sequence[Tuple[str, Optional[Sequence[Any]], bool]], lowp: bool = False, stochastic_rounding: bool = False,
    absmax: Optional[Sequence[Optional[Sequence[Any]]]] = None,
) -> None: ...
def check_overlap(written: Sequence[Any], read: Sequence[Any]) -> None: ...
def _register_torch(
    tensor_type: Any, float32: Any, float64: Any, strided: Any, bfloat16: Any = None, float16: Any = None
) -> None: ...

class Plan:
    """The validation of a step's written arrays, done once (cpp/bindings/plan.hpp)."""

    def __init__(self, written: Sequence[Optional[_Arrays]]) -> None: ...
    @property
    def count(self) -> int: ...
    @property
    def roles(self) -> int: ...

class TorchPlan:
    """fusedopt.torch's steady-state step (cpp/bindings/torch_plan.hpp)."""

    def __init__(
        self, kernel: str, has_step: bool, param_groups: List[Any], state: dict[Any, Any],
        groups: List[Tuple[Tuple[str, ...], Tuple[Any, ...], dict[str, Any], List[Optional[str]], bool]],
        increment_version: Any, serial_below: int,
    ) -> None: ...
    def step(self, param_groups: List[Any], state: dict[Any, Any], threads: int) -> int: ...
    def refresh(self, k: int, snapshot: Tuple[Any, ...], view: dict[str, Any]) -> None: ...
    @property
    def count(self) -> int: ...

class Stepper:
    """The optimizer classes' fast path for their common planned step (cpp/bindings/stepper.hpp)."""

    def __init__(
        self, kernel: str, plan: Plan, params: List[np.ndarray], lists: Sequence[Optional[List[np.ndarray]]],
        role_keys: Sequence[Optional[str]], group: dict[str, Any], keys: Tuple[str, ...], snapshot: Tuple[Any, ...],
        states: List[dict[str, Any]], view: Any, has_step: bool,
    ) -> None: ...
    def step(self, grads: Sequence[Any], param_groups: List[Any], state: List[Any], threads: int) -> bool: ...
    def refresh(self, snapshot: Tuple[Any, ...], view: Any) -> None: ...
    @property
    def count(self) -> int: ...

_stepper_kernels: Tuple[str, ...]

def _stepper_scalars(kernel: str, view: Any, t: int) -> Tuple[Any, ...]: ...

class Functional:
    """A function of fusedopt.functional with its C++ fast path (cpp/bindings/functional.cpp)."""

    __wrapped__: Callable[..., Optional[float]]
    __signature__: Any
    __source__: str
    __name__: str
    __qualname__: str
    def __call__(self, *args: Any, **kwargs: Any) -> Optional[float]: ...
    @property
    def _fast_calls(self) -> int: ...

def _functional(
    traits: str, kernel: str, fallback: Callable[..., Optional[float]], positional: Sequence[Tuple[str, bool]],
    keywords: Sequence[Tuple[Any, ...]], fixed: Sequence[Tuple[str, Any]], threads_module: Any, threads_key: str,
) -> Functional: ...

_functional_traits: Tuple[str, ...]

def sgd(
    params: _Arrays, grads: _Arrays, momentum_buffers: Optional[_Arrays], lr: float, weight_decay: float,
    momentum: float, one_minus_dampening: float, grad_scale: float, clip_coef: float, clip_value: float,
    nesterov: bool, maximize: bool, first_step: bool, threads: int, plan: Optional[Plan] = None,
    counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def momentum(
    params: _Arrays, grads: _Arrays, velocities: _Arrays, step_size: float, beta: float,
    one_minus_beta: float, weight_decay: float, grad_scale: float, clip_coef: float, clip_value: float,
    threads: int, plan: Optional[Plan] = None,
    counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def rmsprop(
    params: _Arrays, grads: _Arrays, square_avgs: _Arrays, grad_avgs: Optional[_Arrays],
    momentum_buffers: Optional[_Arrays], lr: float, buffer_lr: float, alpha: float, one_minus_alpha: float,
    eps_outside: float, eps_inside: float, weight_decay: float, momentum: float, grad_scale: float,
    clip_coef: float, clip_value: float, maximize: bool, threads: int, plan: Optional[Plan] = None,
    counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def adam(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, max_exp_avg_sqs: Optional[_Arrays],
    neg_step_size: float, eps_scaled: float, eps_root_scaled: float, beta1: float, one_minus_beta1: float,
    beta2: float, one_minus_beta2: float, weight_decay: float, decay_factor: float, torch_neg_step_size: float,
    bias_correction2_sqrt: float, torch_eps: float, grad_scale: float, clip_coef: float, clip_value: float,
    maximize: bool, torch_exact: bool, threads: int, plan: Optional[Plan] = None,
    counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def adagrad(
    params: _Arrays, grads: _Arrays, state_sums: _Arrays, neg_clr: float, eps: float, weight_decay: float,
    grad_scale: float, clip_coef: float, clip_value: float, maximize: bool, threads: int,
    plan: Optional[Plan] = None, counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def lion(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, lr: float, beta1: float, one_minus_beta1: float,
    beta2: float, one_minus_beta2: float, decay_factor: float, grad_scale: float, clip_coef: float,
    clip_value: float, maximize: bool, threads: int, plan: Optional[Plan] = None, counters: _Counters = None,
    masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def adamax(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_infs: _Arrays, neg_clr: float, eps: float,
    beta1: float, one_minus_beta1: float, beta2: float, weight_decay: float, grad_scale: float,
    clip_coef: float, clip_value: float, maximize: bool, threads: int, plan: Optional[Plan] = None,
    counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def muon(
    params: _Arrays, grads: _Arrays, momentum_buffers: _Arrays, updates: _Arrays, one_minus_momentum: float,
    momentum: float, decay_factor: float, neg_lr: float, grad_scale: float, clip_coef: float, clip_value: float,
    nesterov: bool, apply: bool, threads: int, plan: Optional[Plan] = None, counters: _Counters = None,
    masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def adafactor(
    params: _Arrays, grads: _Arrays, row_vars: Sequence[Optional[Any]], col_vars: Sequence[Optional[Any]],
    variances: Sequence[Optional[Any]], w: float, rho: float, eps1: float, eps1_sq: float, eps2: float, d: float,
    decay: float, has_wd: bool, maximize: bool, threads: int, counters: _Counters = None, check_only: bool = False,
) -> None: ...
def lamb(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, neg_lr: float, m_scale: float,
    eps: float, beta1: float, one_minus_beta1: float, beta2: float, one_minus_beta2: float, weight_decay: float,
    clamp_value: float, grad_scale: float, clip_coef: float, clip_value: float, maximize: bool, adam: bool,
    threads: int, plan: Optional[Plan] = None, counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def lars(
    params: _Arrays, grads: _Arrays, mus: _Arrays, neg_lr: float, momentum: float, weight_decay: float, eta: float,
    eps: float, grad_scale: float, clip_coef: float, clip_value: float, maximize: bool, lars_adaptation: bool,
    threads: int, plan: Optional[Plan] = None, counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def radam(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, bias_correction1: float, lr: float,
    eps: float, bias_correction2_sqrt: float, rect: float, beta1: float, one_minus_beta1: float, beta2: float,
    one_minus_beta2: float, weight_decay: float, decay_factor: float, rectified: float, grad_scale: float,
    clip_coef: float, clip_value: float, maximize: bool, threads: int, plan: Optional[Plan] = None,
    counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def nadam(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, grad_coef: float, momentum_coef: float,
    bias_correction2: float, eps: float, beta1: float, one_minus_beta1: float, beta2: float, one_minus_beta2: float,
    weight_decay: float, decay_factor: float, grad_scale: float, clip_coef: float, clip_value: float, maximize: bool,
    threads: int, plan: Optional[Plan] = None, counters: _Counters = None, masters: Optional[_Arrays] = None,
    stochastic_rounding: bool = False, seed: int = 0, sr_step: int = 0,
    absmax: Optional[Sequence[Optional[_Arrays]]] = None, sr_offsets: Optional[Sequence[int]] = None,
    trust: Optional[Tuple[int, Any]] = None,
) -> None: ...
def ema(averages: _Arrays, params: _Arrays, decay: float, one_minus_decay: float, threads: int) -> None: ...
def sum_of_squares(arrays: _Arrays, threads: int) -> float: ...
def compiled_isas() -> List[str]: ...
def supported_isas() -> List[str]: ...
def disabled_isas() -> List[str]: ...
def active_isa() -> str: ...
def automatic_isa() -> str: ...
def _force_isa(isa: Optional[str]) -> None: ...
def omp_max_threads() -> int: ...
def serial_after_fork() -> bool: ...
def _traffic_probe(written: Sequence[_Arrays], read: _Arrays, scale: float, threads: int) -> None: ...
