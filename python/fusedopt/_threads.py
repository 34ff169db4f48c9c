"""Thread policy (in the style of scikit-learn's ``_openmp_helpers``).

* ``set_num_threads(n)`` sets the number of threads fusedopt uses; ``None`` restores the default.
* The default honours ``OMP_NUM_THREADS``; otherwise it is the number of CPUs this process may run
  on (``os.sched_getaffinity``), capped by OpenMP's own limit. Without OpenMP it is 1.
* Every thread count (``threads=``, ``set_num_threads``) must be between 1 and :data:`MAX_THREADS`
  (1024); outside that range it is a ``ValueError`` naming the argument, before anything is
  modified. An ``OMP_NUM_THREADS`` above the bound is clamped to it. (An OpenMP runtime asked
  for thousands of threads can fail to create them and end the process.)
* In a process forked after fusedopt had started an OpenMP team, the kernels run every step on
  one thread whatever the count (``_core.serial_after_fork()``; the team does not survive fork).
* A call with ``threads=None`` runs serially when the call updates fewer elements than the
  algorithm's crossover below (waking a sleeping OpenMP team costs tens of microseconds, more than
  the work of a small step). An explicit ``threads=n`` is used as given.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

from . import _core

#: Serial below this many elements per call (all tensors of the call together). Chosen for issue 12
#: from ``benchmarks/serial_threshold.py`` on the 2-core development VM (AMD EPYC, AVX2), 2
#: threads against 1, medians, 2026-12-06, in three situations:
#:
#: * in a real training loop (torch forward and backward of an MLP between ``fusedopt.torch``
#:   steps, the common case): Adam's 2 threads win from 2^13-2^14 (1.05x, 1.14x; 1.5x at 2^16,
#:   1.8x from 2^18), Lion's from 2^13-2^14 (1.07x, 1.21x), SGD with momentum's from 2^15 (1.57x);
#: * back to back (``hot``): Adam from 2^13 (1.3x; 1.8x at 2^16), Lion from 2^14 (1.17x), SGD from
#:   2^16 (1.42x; 0.83x at 2^15);
#: * after a 50 ms pause with the machine otherwise idle: waking the sleeping worker cost ~5.5 ms on
#:   this VM at every size (the hypervisor had descheduled the idle vCPU), so 2 threads lost below
#:   2^21 whatever the threshold; inside a training loop the CPUs stay busy and no such cost shows.
#:
#: So 2^14 for the algorithms with a square root or a division per element (and Lion), 2^16 for
#: SGD and momentum (pure multiply-adds). The earlier 2^18 (issue 9) was chosen from the after-idle
#: measurement, which protects nothing below 2^21 and costs 1.1-1.8x in training loops. Pass
#: ``threads=1`` for rare, isolated small steps; ``threads=`` overrides this policy.
SERIAL_BELOW: dict[str, int] = {
    "sgd": 1 << 16,
    "momentum": 1 << 16,
    "rmsprop": 1 << 14,
    "adam": 1 << 14,
    "adagrad": 1 << 14,
    "lion": 1 << 14,
    "lamb": 1 << 14,  # (not measured: Adam's, whose pass it repeats twice)
    "radam": 1 << 14,
    "nadam": 1 << 14,
    "lars": 1 << 14,  # (not measured: two passes of SGD with momentum and a square root per tensor)
    "adamax": 1 << 14,
    "muon": 1 << 14,
    "adafactor": 1 << 14,  # (not measured: Adam's; three passes over the gradient)
}

#: The largest thread count accepted by ``threads=`` and :func:`set_num_threads` (the compiled core
#: refuses the same range). Far above any useful count for a memory-bound step.
MAX_THREADS = 1024

_user_threads: Optional[int] = None


def _check_count(name: str, n: object) -> int:
    """``n`` as a thread count: an int in [1, MAX_THREADS] (``name`` is the argument's name)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int or None, got {type(n).__name__}")
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{name} must be between 1 and {MAX_THREADS}, got {n}")
    return n


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> Optional[int]:
    """The first ``OMP_NUM_THREADS`` entry if it is a positive integer, clamped to MAX_THREADS."""
    raw = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if not (raw.isascii() and raw.isdigit()):  # isascii: str.isdigit() also accepts e.g. "²"
        return None
    digits = raw.lstrip("0")
    if not digits:
        return None
    # no int() of thousands of digits (Python refuses more than 4300)
    return MAX_THREADS if len(digits) > len(str(MAX_THREADS)) else min(int(digits), MAX_THREADS)


#: (process id, its CPU count): the affinity is read once per process (a system call), not at every step
_cpus_of_process: Tuple[int, int] = (-1, 1)


def _process_cpu_count() -> int:
    global _cpus_of_process
    pid = os.getpid()
    if _cpus_of_process[0] != pid:  # first call, or a forked child
        _cpus_of_process = (pid, _cpu_count())
    return _cpus_of_process[1]


def default_num_threads() -> int:
    """The thread count used when :func:`set_num_threads` was not called (``OMP_NUM_THREADS`` and
    OpenMP's limit, e.g. threadpoolctl's, are read at every call; the CPU affinity once per process)."""
    if not _core.openmp_enabled:
        return 1
    env = _env_threads()
    if env is not None:
        return env
    return max(1, min(_core.omp_max_threads(), _process_cpu_count(), MAX_THREADS))


def get_num_threads() -> int:
    """The number of threads fusedopt's kernels use for large steps."""
    return _user_threads if _user_threads is not None else default_num_threads()


def set_num_threads(n: Optional[int]) -> int:
    """Set the number of threads for large steps, 1 to :data:`MAX_THREADS` (``None``: back to the
    default). Returns the old value."""
    global _user_threads
    if n is not None:
        _check_count("n", n)
    old = get_num_threads()
    _user_threads = n
    return old


def serial(n_elements: int, algorithm: str) -> bool:
    """Whether a call with ``threads=None`` updating ``n_elements`` elements runs on one thread."""
    return n_elements < SERIAL_BELOW[algorithm]


def resolve(threads: Optional[int], n_elements: int, algorithm: str) -> int:
    """The thread count for one native call updating ``n_elements`` elements in total."""
    if threads is None:
        if n_elements < SERIAL_BELOW[algorithm]:  # serial(), inlined: every functional call passes here
            return 1
        return get_num_threads()
    return _check_count("threads", threads)
