"""Runtime ISA dispatch: what is compiled and supported, the automatic choice, the ``_force_isa``
test hook, ``FUSEDOPT_DISABLE_ISA`` (read once per process, so tested in subprocesses) and
``show_config``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fusedopt
from fusedopt import _core

MACHINE = platform.machine().lower()
IS_X86_64 = MACHINE in ("x86_64", "amd64")
IS_AARCH64 = MACHINE in ("aarch64", "arm64")
BASELINE = "sse2" if IS_X86_64 else "neon" if IS_AARCH64 else "generic"
KNOWN_ISAS = ("sse2", "avx2", "avx512", "neon", "generic")


def _disabled_from_env() -> list:
    raw = os.environ.get("FUSEDOPT_DISABLE_ISA", "")
    return [x.strip().lower() for x in raw.split(",") if x.strip()]


def run_python(code: str, *, disable=None, tmp_path=None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with FUSEDOPT_DISABLE_ISA set to ``disable`` (None: unset)."""
    env = dict(os.environ)
    env.pop("FUSEDOPT_DISABLE_ISA", None)
    if disable is not None:
        env["FUSEDOPT_DISABLE_ISA"] = disable
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


PROBE = """
    import json, warnings
    import numpy as np
    import fusedopt
    from fusedopt import _core
    p = np.zeros(5, np.float32)
    fusedopt.functional.sgd(p, np.ones(5, np.float32), lr=1.0)
    assert p.tolist() == [-1.0] * 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = fusedopt.show_config(print_=False)
    print(json.dumps({
        "active": _core.active_isa(), "automatic": _core.automatic_isa(),
        "disabled": list(_core.disabled_isas()), "config_active": cfg["active_isa"],
        "warnings": [str(w.message) for w in caught],
    }))
"""


def probe(disable, tmp_path) -> dict:
    proc = run_python(PROBE, disable=disable, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- what is compiled and supported ------------------------------------------------------------


def test_baseline_always_compiled_and_supported():
    assert _core.compiled_isas()[0] == BASELINE
    assert _core.supported_isas()[0] == BASELINE


@pytest.mark.skipif(not IS_X86_64, reason="x86-64 build")
def test_x86_64_compiles_every_target():
    assert list(_core.compiled_isas()) == ["sse2", "avx2", "avx512"]


def test_supported_is_an_ordered_subset_of_compiled():
    compiled = list(_core.compiled_isas())
    supported = list(_core.supported_isas())
    assert set(compiled) <= set(KNOWN_ISAS)
    assert len(set(compiled)) == len(compiled)
    assert supported == [x for x in compiled if x in supported]


@pytest.mark.skipif(not IS_X86_64, reason="x86-64 CPU flags")
def test_supported_matches_cpu_flags():
    """On Linux, cross-check against the kernel's view of the CPU (/proc/cpuinfo flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags_line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags")
    flags = set(flags_line.split(":", 1)[1].split())
    supported = set(_core.supported_isas())
    assert ("avx2" in supported) == ({"avx2", "fma"} <= flags)
    assert ("avx512" in supported) == ({"avx512f", "avx512vl", "avx512bw", "avx512dq"} <= flags)


# ---- automatic choice and forcing ----------------------------------------------------------------


def test_automatic_is_best_supported_not_disabled():
    disabled = _disabled_from_env()
    candidates = [x for x in _core.supported_isas() if x not in disabled or x == BASELINE]
    assert _core.automatic_isa() == candidates[-1]
    if not disabled:
        assert _core.automatic_isa() == _core.supported_isas()[-1]


def test_automatic_is_best_supported_when_env_unset(tmp_path):
    info = probe(None, tmp_path)
    assert info["automatic"] == info["active"] == info["config_active"] == _core.supported_isas()[-1]
    assert info["disabled"] == [] and info["warnings"] == []


@pytest.mark.parametrize("name", list(_core.supported_isas()))
def test_force_isa_sets_active(name):
    try:
        _core._force_isa(name)
        assert _core.active_isa() == name
        assert fusedopt.show_config(print_=False)["active_isa"] == name
        p = np.ones(40, np.float64)
        fusedopt.functional.sgd(p, np.ones(40), lr=0.5)  # the forced kernel runs
        np.testing.assert_array_equal(p, 0.5)
    finally:
        _core._force_isa(None)
    assert _core.active_isa() == _core.automatic_isa()


def test_isa_fixture_forces(isa):
    assert _core.active_isa() == isa


@pytest.mark.parametrize("name", ["bogus", "", "AVX2x", "sse3"])
def test_force_unknown_isa_raises(name):
    before = _core.active_isa()
    with pytest.raises(ValueError, match="not compiled in or not supported"):
        _core._force_isa(name)
    assert _core.active_isa() == before


def test_force_unsupported_isa_raises():
    """Known names that this build/CPU cannot run: other platforms' targets, and compiled targets
    this CPU lacks (e.g. avx512 on Zen 3)."""
    unavailable = [x for x in KNOWN_ISAS if x not in _core.supported_isas()]
    assert unavailable  # at least the other architecture's baseline
    before = _core.active_isa()
    for name in unavailable:
        with pytest.raises(ValueError, match=name):
            _core._force_isa(name)
        assert _core.active_isa() == before


# ---- FUSEDOPT_DISABLE_ISA (subprocesses) ---------------------------------------------------------


def _best_without(disabled) -> str:
    left = [x for x in _core.supported_isas() if x not in disabled or x == BASELINE]
    return left[-1]


@pytest.mark.skipif(not IS_X86_64, reason="x86-64 targets")
@pytest.mark.parametrize(
    "disable, disabled",
    [
        ("avx512", ["avx512"]),
        ("avx512,avx2", ["avx512", "avx2"]),
        (" AVX2 , avx512 ,", ["avx2", "avx512"]),  # spaces, case, empty items
        ("avx2", ["avx2"]),
    ],
    ids=["avx512", "avx512+avx2", "spaces-case", "avx2-only"],
)
def test_disable_isa(disable, disabled, tmp_path):
    info = probe(disable, tmp_path)
    expected = _best_without(disabled)
    assert info["active"] == info["automatic"] == info["config_active"] == expected
    assert sorted(info["disabled"]) == sorted(disabled)
    assert info["warnings"] == []


@pytest.mark.skipif(not IS_X86_64, reason="x86-64 targets")
def test_disable_avx512_gives_avx2_when_supported(tmp_path):
    if "avx2" not in _core.supported_isas():
        pytest.skip("CPU without AVX2")
    assert probe("avx512", tmp_path)["active"] == "avx2"
    assert probe("avx512,avx2", tmp_path)["active"] == "sse2"


def test_baseline_cannot_be_disabled(tmp_path):
    info = probe(BASELINE, tmp_path)
    assert info["active"] == _core.supported_isas()[-1]
    assert BASELINE not in info["disabled"]


@pytest.mark.skipif(not IS_X86_64, reason="needs a known target that is not compiled here")
def test_disabling_a_target_not_compiled_is_ignored_with_warning(tmp_path):
    info = probe("neon", tmp_path)
    assert info["active"] == _core.supported_isas()[-1]
    assert info["disabled"] == []
    assert any("neon" in w and "FUSEDOPT_DISABLE_ISA" in w for w in info["warnings"]), info["warnings"]


@pytest.mark.parametrize(
    "code",
    [
        "import numpy as np, fusedopt\n"
        "fusedopt.functional.adam(np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3), step=1)",
        "from fusedopt import _core\n_core.active_isa()",
    ],
    ids=["first-kernel-call", "active_isa"],
)
def test_unknown_disable_name_is_an_error_at_first_use(code, tmp_path):
    # importing alone must still work (the variable is read at first use)
    ok = run_python("import fusedopt; print('imported')", disable="avx512,avx9", tmp_path=tmp_path)
    assert ok.returncode == 0 and "imported" in ok.stdout, ok.stderr
    proc = run_python(code, disable="avx512,avx9", tmp_path=tmp_path)
    assert proc.returncode != 0
    assert "FUSEDOPT_DISABLE_ISA" in proc.stderr and "avx9" in proc.stderr, proc.stderr
    assert "Error" in proc.stderr  # a Python exception, not a crash
    assert proc.returncode == 1, f"crashed with {proc.returncode}: {proc.stderr}"


def test_unknown_disable_name_error_repeats(tmp_path):
    """The failure is not a one-off: every later call fails too (no half-initialised dispatcher)."""
    code = """
        import numpy as np, fusedopt
        errors = 0
        for _ in range(3):
            try:
                fusedopt.functional.sgd(np.zeros(3), np.ones(3), lr=1.0)
            except Exception as exc:
                assert "FUSEDOPT_DISABLE_ISA" in str(exc), exc
                errors += 1
        print(errors)
    """
    proc = run_python(code, disable="avx9", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "3"


# ---- show_config -----------------------------------------------------------------------------------

CONFIG_KEYS = {"version", "compiled_isas", "supported_isas", "active_isa", "openmp", "num_threads"}


def test_show_config_returns_dict_without_printing(capsys):
    info = fusedopt.show_config(print_=False)
    assert capsys.readouterr().out == ""
    assert CONFIG_KEYS <= set(info)
    assert info["version"] == fusedopt.__version__
    assert info["compiled_isas"] == list(_core.compiled_isas())
    assert info["supported_isas"] == list(_core.supported_isas())
    assert info["active_isa"] == _core.active_isa()
    assert info["openmp"] is bool(_core.openmp_enabled)
    assert info["num_threads"] == fusedopt.get_num_threads()
    json.dumps(info)  # plain data


def test_show_config_prints(capsys):
    info = fusedopt.show_config(print_=True)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == len(info)
    for key in CONFIG_KEYS:
        (line,) = [x for x in lines if x.split(":", 1)[0].strip() == key]
        assert line.split(":", 1)[1].strip() != ""
    assert fusedopt.__version__ in out
    assert ", ".join(_core.supported_isas()) in out
    assert _core.active_isa() in out


def test_show_config_default_prints(capsys):
    fusedopt.show_config()
    assert "active_isa" in capsys.readouterr().out


def test_show_config_print_is_keyword_only():
    with pytest.raises(TypeError):
        fusedopt.show_config(False)  # type: ignore[misc]
