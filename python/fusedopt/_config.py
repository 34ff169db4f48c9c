"""``fusedopt.show_config()``: what was compiled, what this CPU runs, and the thread settings."""

from __future__ import annotations

import os
import platform
import warnings
from typing import Any, Dict, List

from . import _core, _threads

_KNOWN_ISAS = ("sse2", "avx2", "avx512", "neon", "generic")


def _requested_disabled() -> List[str]:
    raw = os.environ.get("FUSEDOPT_DISABLE_ISA", "")
    return [x.strip().lower() for x in raw.split(",") if x.strip()]


def config() -> Dict[str, Any]:
    """The build and runtime configuration as a dict (what :func:`show_config` prints)."""
    compiled = list(_core.compiled_isas())
    requested = _requested_disabled()
    for name in requested:
        if name in _KNOWN_ISAS and name not in compiled:
            warnings.warn(
                f"FUSEDOPT_DISABLE_ISA names '{name}', which is not compiled into this build", RuntimeWarning, 2
            )
    return {
        "version": _core.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "compiler": _core.compiler,
        "compiled_isas": compiled,
        "supported_isas": list(_core.supported_isas()),
        "disabled_isas": list(_core.disabled_isas()),
        "active_isa": _core.active_isa(),
        "openmp": bool(_core.openmp_enabled),
        "num_threads": _threads.get_num_threads(),
        "max_threads": _threads.MAX_THREADS,
        "serial_after_fork": bool(_core.serial_after_fork()),
        "serial_below": dict(_threads.SERIAL_BELOW),
    }


def show_config(*, print_: bool = True) -> Dict[str, Any]:
    """Print (unless ``print_=False``) and return version, ISAs, OpenMP and thread settings.

    ``compiled_isas``: kernel targets in this build; ``supported_isas``: those this CPU and OS can
    run; ``active_isa``: the one in use (the best supported one not disabled by
    ``FUSEDOPT_DISABLE_ISA``); ``num_threads``: threads for large steps (``set_num_threads``,
    default ``OMP_NUM_THREADS`` or the CPUs available); ``max_threads``: the largest thread count
    accepted; ``serial_after_fork``: True in a process forked after fusedopt had started its
    OpenMP team (which does not survive ``fork()``), where every step runs on one thread;
    ``serial_below``: per-algorithm sizes under which a step runs on one thread.
    """
    info = config()
    if print_:
        width = max(len(k) for k in info)
        for k, v in info.items():
            if isinstance(v, list):
                v = ", ".join(v) if v else "-"
            print(f"{k:<{width}} : {v}")
    return info
