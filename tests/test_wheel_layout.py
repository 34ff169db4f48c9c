"""The installed package: what the wheel ships, and that importing it is safe on any CPU.

* one version (pyproject -> CMake -> ``_core.__version__`` -> ``fusedopt.__version__`` and the
  distribution metadata);
* the typing files (``_core.pyi``, ``py.typed``) are installed and the stub names exactly what the
  compiled module defines;
* x86-64 ELF: the code that runs when the extension is loaded (``.init_array`` entries and the
  exported functions, ``PyInit__core`` included) has no AVX/AVX2/AVX-512 instruction; this reads
  the installed binary, where tests/test_build.py reads the objects of a build tree;
* emulated CPUs (``qemu-x86_64``, when installed): on a CPU with AVX but no AVX2/FMA
  (SandyBridge) the package imports, selects ``sse2`` and every algorithm matches the reference
  bitwise; on a CPU with AVX2 but no AVX-512 (Haswell) it selects ``avx2``;
* ``FUSEDOPT_TEST_INSTALLED_WHEEL=1`` (set by scripts/test_wheel.sh): the package comes from a
  repaired wheel: manylinux tag, and on Linux the OpenMP runtime is the vendored
  ``fusedopt.libs/libgomp-<hash>`` found through the extension's RPATH, not a system libgomp.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import platform
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fusedopt
from fusedopt import _core

PACKAGE_DIR = Path(fusedopt.__file__).resolve().parent
CORE_PATH = Path(_core.__file__).resolve()
IS_X86_64 = platform.machine() in ("x86_64", "AMD64", "amd64")
IS_ELF = CORE_PATH.read_bytes()[:4] == b"\x7fELF"
FROM_WHEEL = os.environ.get("FUSEDOPT_TEST_INSTALLED_WHEEL") == "1"
needs_wheel = pytest.mark.skipif(not FROM_WHEEL, reason="set FUSEDOPT_TEST_INSTALLED_WHEEL=1 (scripts/test_wheel.sh)")


# --- a minimal ELF64 little-endian reader (sections, dynamic tags, dynamic symbols) ---------------


class Elf:
    def __init__(self, path: Path) -> None:
        self.data = path.read_bytes()
        assert self.data[:4] == b"\x7fELF" and self.data[4] == 2 and self.data[5] == 1, "ELF64 LE only"
        shoff = struct.unpack_from("<Q", self.data, 0x28)[0]
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", self.data, 0x3A)
        self.sections = []
        for i in range(shnum):
            name, typ, flags, addr, off, size, link, info, align, entsize = struct.unpack_from(
                "<IIQQQQIIQQ", self.data, shoff + i * shentsize
            )
            self.sections.append({"name_off": name, "type": typ, "addr": addr, "off": off, "size": size, "link": link})
        strtab = self.sections[shstrndx]
        for s in self.sections:
            s["name"] = self._cstr(strtab["off"] + s["name_off"])

    def _cstr(self, off: int) -> str:
        end = self.data.index(b"\0", off)
        return self.data[off:end].decode()

    def section(self, name: str) -> dict | None:
        return next((s for s in self.sections if s["name"] == name), None)

    def dynamic(self) -> list[tuple[int, str]]:
        """(tag, string) for DT_NEEDED (1), DT_RPATH (15) and DT_RUNPATH (29)."""
        dyn, dynstr = self.section(".dynamic"), self.section(".dynstr")
        assert dyn is not None and dynstr is not None
        out = []
        for i in range(dyn["size"] // 16):
            tag, val = struct.unpack_from("<qQ", self.data, dyn["off"] + 16 * i)
            if tag in (1, 15, 29):
                out.append((tag, self._cstr(dynstr["off"] + val)))
        return out

    def exported_functions(self) -> list[tuple[str, int, int]]:
        """(name, address, size) of every defined FUNC symbol in .dynsym."""
        dynsym, dynstr = self.section(".dynsym"), self.section(".dynstr")
        assert dynsym is not None and dynstr is not None
        out = []
        for i in range(dynsym["size"] // 24):
            name, info, other, shndx, value, size = struct.unpack_from("<IBBHQQ", self.data, dynsym["off"] + 24 * i)
            if info & 0xF == 2 and shndx != 0 and size > 0:
                out.append((self._cstr(dynstr["off"] + name), value, size))
        return out

    def init_array(self) -> list[int]:
        """Addresses of the load-time constructors (values, or R_X86_64_RELATIVE addends)."""
        sec = self.section(".init_array")
        if sec is None:
            return []
        addends = {}
        rela = self.section(".rela.dyn")
        if rela is not None:
            for i in range(rela["size"] // 24):
                r_offset, r_info, r_addend = struct.unpack_from("<QQq", self.data, rela["off"] + 24 * i)
                if r_info & 0xFFFFFFFF == 8:  # R_X86_64_RELATIVE
                    addends[r_offset] = r_addend
        out = []
        for i in range(sec["size"] // 8):
            value = struct.unpack_from("<Q", self.data, sec["off"] + 8 * i)[0]
            out.append(value or addends.get(sec["addr"] + 8 * i, 0))
        return [a for a in out if a not in (0, 0xFFFFFFFFFFFFFFFF)]


# --- version and typing files ----------------------------------------------------------------------


def test_version_has_one_source() -> None:
    assert fusedopt.__version__ == _core.__version__ == importlib.metadata.version("fusedopt")
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", fusedopt.__version__)


def test_typing_files_are_installed() -> None:
    assert (PACKAGE_DIR / "py.typed").is_file()
    assert (PACKAGE_DIR / "_core.pyi").is_file()
    files = {str(f).replace("\\", "/") for f in importlib.metadata.files("fusedopt") or []}
    assert "fusedopt/py.typed" in files and "fusedopt/_core.pyi" in files


def test_stub_names_exactly_the_compiled_module() -> None:
    tree = ast.parse((PACKAGE_DIR / "_core.pyi").read_text())
    stub: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            stub.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            stub.add(node.target.id)
    # Type aliases of the stub (plain assignments such as _Arrays) are not collected; module
    # dunders other than __version__ are Python's own.
    runtime = {n for n in dir(_core) if not (n.startswith("__") and n != "__version__")}
    assert sorted(runtime - stub) == [], "defined by fusedopt._core but missing from _core.pyi"
    assert sorted(stub - runtime) == [], "in _core.pyi but not defined by fusedopt._core"


# --- import-time code is baseline-only (x86-64 ELF) ------------------------------------------------

_AVX_REGISTER = re.compile(r"%(ymm|zmm|k[0-7])\b")


def _avx_in(path: Path, start: int, stop: int, stop_at_ret: bool) -> list[str]:
    text = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", f"--start-address={start:#x}", f"--stop-address={stop:#x}", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    bad = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not re.match(r"^\s*[0-9a-f]+:$", parts[0]):
            continue
        insn = parts[1].strip()
        mnemonic = insn.split()[0] if insn else ""
        if (mnemonic.startswith("v") and mnemonic not in ("verr", "verw")) or _AVX_REGISTER.search(insn):
            bad.append(insn)
        if stop_at_ret and mnemonic.startswith("ret"):
            break
    return bad


@pytest.mark.skipif(not (IS_X86_64 and IS_ELF), reason="x86-64 ELF check")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) not found")
def test_load_time_code_is_baseline_only() -> None:
    elf = Elf(CORE_PATH)
    constructors = elf.init_array()
    exported = elf.exported_functions()
    assert any(name == "PyInit__core" for name, _, _ in exported)
    found = {}
    for addr in constructors:  # sizes are unknown in a stripped binary: read up to the first ret
        found[f"init_array@{addr:#x}"] = _avx_in(CORE_PATH, addr, addr + 4096, stop_at_ret=True)
    for name, addr, size in exported:
        found[name] = _avx_in(CORE_PATH, addr, addr + size, stop_at_ret=False)
    offenders = {k: v[:5] for k, v in found.items() if v}
    assert offenders == {}, f"load-time code uses AVX instructions: {offenders}"


# --- emulated CPUs ---------------------------------------------------------------------------------

_EMULATED_CHILD = textwrap.dedent(
    """
    import json
    import numpy as np
    import fusedopt
    from fusedopt import _core, functional as F, reference as R

    CASES = [  # (name, number of state buffers, hyperparameters as a function of the step t)
        ("sgd", 1, lambda t: dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, first_step=t == 1)),
        ("momentum", 1, lambda t: dict(step=t, lr=0.05, beta=0.9, bias_correction=True, weight_decay=0.01)),
        ("rmsprop", 3, lambda t: dict(lr=0.01, centered=True, momentum=0.9, weight_decay=0.01)),
        ("adam", 3, lambda t: dict(step=t, lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True)),
        ("adamw", 2, lambda t: dict(step=t, lr=0.01)),
        ("adagrad", 1, lambda t: dict(step=t, lr=0.05, lr_decay=0.01)),
    ]
    rng = np.random.default_rng(7)
    mismatches = []
    for dtype in (np.float32, np.float64):
        for name, nstate, hyper in CASES:
            n = 40_003
            p = rng.standard_normal(n).astype(dtype)
            states = [np.zeros(n, dtype) for _ in range(nstate)]  # as torch initializes them
            rp, rstates = p.copy(), [s.copy() for s in states]
            for t in (1, 2, 3):
                g = rng.standard_normal(n).astype(dtype)
                getattr(F, name)(p, g, *states, threads=2, **hyper(t))
                getattr(R, name)(rp, g, *rstates, **hyper(t))
            if not (np.array_equal(p, rp) and all(np.array_equal(a, b) for a, b in zip(states, rstates))):
                mismatches.append(f"{name}/{np.dtype(dtype).name}")
    print(json.dumps({"supported": list(_core.supported_isas()), "active": _core.active_isa(),
                      "mismatches": mismatches}))
    """
)


@pytest.mark.skipif(not (IS_X86_64 and sys.platform.startswith("linux")), reason="x86-64 Linux emulation")
@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="qemu-x86_64 not installed (apt: qemu-user)")
@pytest.mark.parametrize(
    ("cpu", "supported"),
    [("SandyBridge", ["sse2"]), ("Haswell", ["sse2", "avx2"])],
    ids=["SandyBridge-avx-no-avx2", "Haswell-avx2-no-avx512"],
)
def test_imports_and_runs_on_an_emulated_cpu(cpu: str, supported: list[str]) -> None:
    import json

    proc = subprocess.run(
        ["qemu-x86_64", "-cpu", cpu, sys.executable, "-c", _EMULATED_CHILD],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # SIGILL shows up as qemu's "uncaught target signal 4" and a non-zero exit.
    assert proc.returncode == 0, f"exit {proc.returncode} on {cpu}:\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["supported"] == supported
    disabled = {x.strip() for x in os.environ.get("FUSEDOPT_DISABLE_ISA", "").split(",") if x.strip()}
    assert out["active"] == [isa for isa in supported if isa not in disabled][-1]
    assert out["mismatches"] == []


# --- the repaired wheel ----------------------------------------------------------------------------


def _wheel_tags() -> list[str]:
    dist = importlib.metadata.distribution("fusedopt")
    text = dist.read_text("WHEEL") or ""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


@needs_wheel
def test_installed_from_a_platform_wheel() -> None:
    tags = _wheel_tags()
    assert tags, "no Tag in the installed WHEEL metadata"
    if sys.platform.startswith("linux"):
        assert all("manylinux" in t for t in tags), f"not repaired into a manylinux wheel: {tags}"
    # Installed into site-packages, not importable from a source tree.
    assert "site-packages" in PACKAGE_DIR.parts or "dist-packages" in PACKAGE_DIR.parts


@needs_wheel
@pytest.mark.skipif(not (sys.platform.startswith("linux") and IS_ELF), reason="Linux wheels")
@pytest.mark.skipif(not _core.openmp_enabled, reason="built without OpenMP")
def test_linux_wheel_vendors_its_libgomp() -> None:
    libs = PACKAGE_DIR.parent / "fusedopt.libs"
    vendored = sorted(p.name for p in libs.glob("libgomp*")) if libs.is_dir() else []
    assert len(vendored) == 1, f"expected one vendored libgomp in {libs}, found {vendored}"
    dynamic = Elf(CORE_PATH).dynamic()
    needed = [s for tag, s in dynamic if tag == 1]
    paths = [s for tag, s in dynamic if tag in (15, 29)]
    assert vendored[0] in needed, f"_core does not link the vendored {vendored[0]}: NEEDED {needed}"
    assert "libgomp.so.1" not in needed, "_core still needs a system libgomp.so.1"
    assert any("$ORIGIN/../fusedopt.libs" in p for p in paths), f"RPATH/RUNPATH {paths}"
