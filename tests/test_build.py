"""What the compiler really emitted, read from the object files of the build tree.

`pip install .` keeps its CMake build in build/<wheel tag>/ (pyproject: build-dir). These tests
disassemble those objects with objdump and check the runtime-dispatch design held:

* the baseline kernel object uses no AVX (no VEX/EVEX instruction, no ymm/zmm register), the AVX2
  object uses ymm registers and no zmm, the AVX-512 object uses zmm registers;
* the dispatcher and the bindings (everything that runs at import) use no instruction beyond the
  baseline ISA;
* each kernel object exports exactly one symbol (its table), has no weak symbols (an ISA-flavoured
  weak symbol could be the copy the linker keeps for everyone: numpy/numpy#25274) and no static
  constructors (code that would run at load time, before dispatch).

They are skipped when there is no build tree (e.g. when testing an installed wheel) or no objdump.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 build checks"),
    pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("nm") is None, reason="binutils not found"),
]


def _objects() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for build in sorted((ROOT / "build").glob("cp*/CMakeFiles")):  # wheel builds: build/{wheel_tag}
        for obj in build.rglob("*.o"):
            found.setdefault(obj.name.split(".")[0], obj)
    return found


OBJECTS = _objects()
needs_build = pytest.mark.skipif(not OBJECTS, reason="no build tree (build/<tag>/) next to the tests")


def _disassembly(obj: Path) -> str:
    return subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", str(obj)], check=True, capture_output=True, text=True
    ).stdout


def _mnemonics(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and re.match(r"^\s*[0-9a-f]+:$", parts[0]):
            out.append(parts[1].split()[0] if parts[1].split() else "")
    return out


#: kernels whose reference computes a correctly rounded fused multiply-add on purpose (torch's loop
#: Adafactor: its final ``p.add_(u, alpha=...)`` is one on CPU; cpp/kernels/adafactor.inl
#: ``fma_rn``, reproduced by reference.adafactor): the only functions where an FMA instruction may appear
EXPLICIT_FMA = {"Adafactor"}


def _fma_functions(obj: Path) -> set[str]:
    """The kernels (by their algorithm's name in the demangled symbol) whose code has an FMA
    instruction: -ffp-contract=off forbids implicit ones, so only explicit ``fma_rn`` calls may
    produce them. A function of no recognised kernel is reported by its whole symbol."""
    text = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", str(obj)], check=True,
                          capture_output=True, text=True).stdout  # fmt: skip
    found, func = set(), ""
    for line in text.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            func = head.group(1)
            continue
        parts = line.split("\t")
        if len(parts) >= 2 and re.match(r"^\s*(vfn?m(add|sub))", parts[1]):
            found.add("Adafactor" if re.search(r"Adafactor|adafactor_step", func) else func)
    return found


def _uses(text: str, reg: str) -> int:
    return len(re.findall(rf"%{reg}\d+", text))


@needs_build
def test_baseline_kernels_use_no_avx() -> None:
    text = _disassembly(OBJECTS["kernels_x86_sse2"])
    assert _uses(text, "ymm") == 0 and _uses(text, "zmm") == 0
    vex = [m for m in _mnemonics(text) if m.startswith("v")]
    assert vex == []
    assert re.search(r"\tsqrtp[sd]", text), "baseline kernels should still be vectorized (SSE2 sqrtps/sqrtpd)"


@needs_build
def test_avx2_kernels_use_ymm_and_no_zmm() -> None:
    text = _disassembly(OBJECTS["kernels_x86_avx2"])
    assert _uses(text, "ymm") > 100
    assert _uses(text, "zmm") == 0
    assert re.search(r"\tvsqrtp[sd]\s+%ymm", text), "AVX2 sqrt should be a 256-bit vsqrtps/vsqrtpd"
    # -ffp-contract=off: no implicit fused multiply-add (results must equal the reference bitwise)
    assert _fma_functions(OBJECTS["kernels_x86_avx2"]) <= EXPLICIT_FMA


@needs_build
def test_avx512_kernels_use_zmm() -> None:
    if "kernels_x86_avx512" not in OBJECTS:
        pytest.skip("built without the AVX-512 target")
    text = _disassembly(OBJECTS["kernels_x86_avx512"])
    assert _uses(text, "zmm") > 100
    assert _fma_functions(OBJECTS["kernels_x86_avx512"]) <= EXPLICIT_FMA


@needs_build
@pytest.mark.parametrize("name", ["dispatch", "cpu_features", "module", "arrays", "register_optimizers", "register_runtime"])
def test_import_path_is_baseline_only(name: str) -> None:
    text = _disassembly(OBJECTS[name])
    assert _uses(text, "ymm") == 0 and _uses(text, "zmm") == 0
    vex = sorted({m for m in _mnemonics(text) if m.startswith("v")})
    assert vex == [], f"{name}.cpp.o uses AVX instructions {vex}"


@needs_build
@pytest.mark.parametrize("isa", ["sse2", "avx2", "avx512"])
def test_kernel_objects_export_only_their_table(isa: str) -> None:
    key = f"kernels_x86_{isa}"
    if key not in OBJECTS:
        pytest.skip(f"{isa} not built")
    obj = OBJECTS[key]
    nm = subprocess.run(["nm", "-C", str(obj)], check=True, capture_output=True, text=True).stdout
    defined_global = [ln for ln in nm.splitlines() if re.match(r"^[0-9a-f]+ [A-Z] ", ln)]
    assert [ln.split(" ", 2)[2] for ln in defined_global] == [f"fusedopt::{isa}::kernel_table"]
    weak = [ln for ln in nm.splitlines() if re.match(r"^[0-9a-f ]+ [WwVvu] ", ln)]
    assert weak == []
    sections = subprocess.run(["objdump", "-h", str(obj)], check=True, capture_output=True, text=True).stdout
    assert ".init_array" not in sections and ".ctors" not in sections
