"""Stub of the compiled module fusedopt._core (cpp/bindings). Private: use fusedopt.functional."""

from typing import List, Optional, Sequence

import numpy as np

__version__: str
openmp_enabled: bool
compiler: str

_Arrays = Sequence[np.ndarray]

def sgd(
    params: _Arrays, grads: _Arrays, momentum_buffers: Optional[_Arrays], lr: float, weight_decay: float,
    momentum: float, one_minus_dampening: float, grad_scale: float, clip_coef: float, clip_value: float,
    nesterov: bool, maximize: bool, first_step: bool, threads: int,
) -> None: ...
def momentum(
    params: _Arrays, grads: _Arrays, velocities: _Arrays, step_size: float, beta: float,
    one_minus_beta: float, weight_decay: float, grad_scale: float, clip_coef: float, clip_value: float,
    threads: int,
) -> None: ...
def rmsprop(
    params: _Arrays, grads: _Arrays, square_avgs: _Arrays, grad_avgs: Optional[_Arrays],
    momentum_buffers: Optional[_Arrays], lr: float, buffer_lr: float, alpha: float, one_minus_alpha: float,
    eps_outside: float, eps_inside: float, weight_decay: float, momentum: float, grad_scale: float,
    clip_coef: float, clip_value: float, maximize: bool, threads: int,
) -> None: ...
def adam(
    params: _Arrays, grads: _Arrays, exp_avgs: _Arrays, exp_avg_sqs: _Arrays, max_exp_avg_sqs: Optional[_Arrays],
    neg_step_size: float, bias_correction2_sqrt: float, eps: float, eps_root: float, bias_correction2: float,
    beta1: float, one_minus_beta1: float, beta2: float, one_minus_beta2: float, weight_decay: float,
    decay_factor: float, weight_decay_mode: int, grad_scale: float, clip_coef: float, clip_value: float,
    maximize: bool, torch_exact: bool, threads: int,
) -> None: ...
def adagrad(
    params: _Arrays, grads: _Arrays, state_sums: _Arrays, neg_clr: float, eps: float, weight_decay: float,
    grad_scale: float, clip_coef: float, clip_value: float, maximize: bool, threads: int,
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
