"""Shared fixtures (``isa``, ``dtype``) and the environment line printed at the top of a test run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os

# The OpenMP runtime reads its wait policy once, when it is loaded (before fusedopt or torch is
# imported below). The suite makes thousands of small threaded calls; with the default policy
# (spin, then sleep) an idle worker spins, and on a machine whose cores are busy with other work
# every threaded call then waits for a scheduler time slice (milliseconds). Passive waiting keeps
# the suite's run time independent of the machine's load; it changes no result (results are
# bitwise independent of threading). An explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

import fusedopt
from fusedopt import _core


def pytest_report_header(config):
    try:
        active = _core.active_isa()
    except Exception as exc:  # e.g. a bad FUSEDOPT_DISABLE_ISA: report it, do not break the run
        active = f"<error: {exc}>"
    if importlib.util.find_spec("torch") is not None:
        try:
            torch_version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            torch_version = "installed (version unknown)"
    else:
        torch_version = "not installed"
    return [
        f"fusedopt {fusedopt.__version__}: compiled ISAs {', '.join(_core.compiled_isas())}; "
        f"supported {', '.join(_core.supported_isas())}; active {active}",
        f"fusedopt OpenMP {bool(_core.openmp_enabled)}, num_threads {fusedopt.get_num_threads()}",
        f"numpy {np.__version__}, torch {torch_version}",
    ]


@pytest.fixture(params=list(_core.supported_isas()), ids=lambda name: f"isa={name}")
def isa(request):
    """Every kernel call in the test runs on this ISA (each one this CPU supports)."""
    _core._force_isa(request.param)
    try:
        yield request.param
    finally:
        _core._force_isa(None)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)
