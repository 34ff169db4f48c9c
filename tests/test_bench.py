"""The benchmark package (``python -m fusedopt.bench``): its algorithm table, its peers, its
correctness guard, its command line, and the optional DeepSpeed contender (skipped with a reason
when DeepSpeed is missing). Nothing here asserts a speed."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from fusedopt import bench, functional, reference
from fusedopt.bench import ds_adam, numpy_peer
from fusedopt.bench.arrays import Allocator, make_arrays
from fusedopt.bench.contenders import FACTORIES, fusedopt_runner
from fusedopt.bench.runner import Runner
from fusedopt.bench.verify import NORM_TOLERANCE, mismatch, verify

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _arrays(name: str, dtype, n: int = 1001, plain: bool = False):
    spec = bench.SPECS[name]
    alloc = Allocator(plain)
    return spec, make_arrays(spec, n, dtype, alloc), alloc


# -- the algorithm table ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", bench.ALGORITHMS)
def test_spec_matches_the_functional_and_reference_signatures(name):
    spec = bench.SPECS[name]
    assert spec.name == name
    assert list(inspect.signature(spec.functional).parameters)[: spec.n_arrays] == ["params", "grads", *spec.state]
    ref = inspect.signature(spec.reference).parameters
    assert spec.reference is getattr(reference, name) and spec.functional is getattr(functional, name)
    assert [q.kind for q in ref.values()][: spec.n_arrays] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * spec.n_arrays
    assert ("step" in ref) == spec.uses_step
    hyper = spec.hyperparameters()
    assert set(spec.hyper) <= set(hyper)
    assert "threads" in hyper and "step" not in hyper  # keyword defaults only
    assert len(spec.nonneg) == len(spec.state)
    assert len(spec.torch_state) in (0, len(spec.state))


def test_bytes_per_element():
    assert bench.bytes_per_element("adam", np.float32) == 28
    assert bench.bytes_per_element("adamw", np.float64) == 56
    assert bench.bytes_per_element("momentum", np.float32) == 20


def test_allocator_places_arrays_in_distinct_slots():
    alloc = Allocator()
    a = [alloc.empty(1000, np.float32) for _ in range(4)]
    offsets = {x.ctypes.data % 4096 for x in a}
    assert len(offsets) == 4 and all(x.ctypes.data % 64 == 0 for x in a)
    assert Allocator(plain=True).empty(10, np.float64).dtype == np.float64


# -- peers and the correctness guard ---------------------------------------------------------------


@pytest.mark.parametrize("name", bench.ALGORITHMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("form", ["numpy-textbook", "numpy-inplace", "fusedopt", "fusedopt-1t"])
def test_contenders_pass_the_guard(name, dtype, form):
    spec, arrays, alloc = _arrays(name, dtype)
    runner = FACTORIES[form](spec, arrays, alloc)
    if runner is None:
        assert form.startswith("numpy") and name not in numpy_peer.PEERS  # no NumPy peer: the others run
        return
    assert verify(spec, arrays, runner) is None


@pytest.mark.parametrize("name", bench.ALGORITHMS)
@pytest.mark.parametrize("mode", ["torch-fused", "torch-foreach", "torch-forloop"])
def test_torch_contenders_pass_the_guard(name, mode):
    """Every algorithm with a torch.optim class (the description's ``torch_optim``) has its for-loop
    and foreach contenders, and a fused one where the class takes ``fused=``; all agree with the reference."""
    torch = pytest.importorskip("torch")
    spec, arrays, alloc = _arrays(name, np.float32)
    runner = FACTORIES[mode](spec, arrays, alloc)
    cls = torch.optim.SGD if name == "momentum" else getattr(torch.optim, spec.algorithm.torch_optim or "-", None)
    expected = cls is not None and (mode != "torch-fused" or "fused" in inspect.signature(cls).parameters)
    assert (runner is not None) == expected
    if runner is not None:
        assert verify(spec, arrays, runner) is None


@pytest.mark.parametrize("name", ["lamb", "lars"])
def test_ceiling_moves_the_extra_passes_of_two_phase_steps(name):
    spec, arrays, alloc = _arrays(name, np.float32)
    assert spec.extra_passes > 0 and bench.bytes_per_element(name, np.float32) == 4 * spec.passes
    res = bench.run_config(name, np.float32, 4096, contenders=["fusedopt", "ceiling"], rounds=1)
    assert res["contenders"]["fusedopt"]["pct_ceiling"] > 0


@pytest.mark.parametrize("name", ["momentum", "adam", "adagrad"])
def test_guard_catches_a_wrong_contender(name):
    """A peer with another learning rate is one algorithm off: the guard must say so."""
    spec, arrays, alloc = _arrays(name, np.float32)
    other = bench.Spec(spec.name, spec.state, spec.nonneg, {**spec.hyper, "lr": spec.hyper["lr"] * 1.001})
    runner = numpy_peer.inplace(other, arrays, alloc)
    bad = verify(spec, arrays, runner)
    assert bad is not None and bad.startswith("param")
    exact = fusedopt_runner(None)(other, arrays, alloc)
    assert "not bitwise equal" in verify(spec, arrays, exact)


def test_guard_catches_a_modified_gradient():
    spec, arrays, alloc = _arrays("sgd", np.float64)
    fused = fusedopt_runner(1)(spec, arrays, alloc)

    def step():
        fused.step()
        arrays[1][0] += 1.0

    assert verify(spec, arrays, Runner(step, "exact")) == "grad was modified"


def test_peer_scalars_come_from_the_package():
    spec = bench.SPECS["adamw"]
    s = numpy_peer.peer_scalars(spec, np.float32, step=3)
    # the folded Adam step size (fusedopt._scalars.AdamScalars): -lr*sqrt(1-beta2^t)/(1-beta1^t)
    assert s.neg_step_size == np.float32(-1e-3 * math.sqrt(1 - 0.999**3) / (1 - 0.9**3))
    assert s.decay_factor == np.float32(1 - 1e-3 * 1e-2)
    assert isinstance(s.beta2, np.float32)


def test_norm_tolerance_accepts_float32_constants_and_rejects_another_algorithm():
    """What the DeepSpeed contenders are held to: DeepSpeed's float32 ``1 - beta2`` passes, a
    step without weight decay (Adam for AdamW) or without bias correction does not."""
    spec, arrays, _ = _arrays("adamw", np.float32, n=4096)
    p, g, m, v = arrays
    want = [a.copy() for a in arrays]
    reference.adamw(*want, **spec.kwargs(bench.STEP))
    f32 = np.float32
    v32 = f32(0.999) * v + (f32(1) - f32(0.999)) * g * g  # 1 - beta2 in float32: ~1.3e-5 off
    assert mismatch(v32, want[3], "rel") is not None  # element-wise too strict for it
    assert mismatch(v32, want[3], "norm") is None
    for variant in ({"weight_decay": 0.0}, {"lr": 1e-3 * (1 - 0.9**bench.STEP)}):
        got = [a.copy() for a in arrays]
        reference.adamw(*got, **{**spec.kwargs(bench.STEP), **variant})
        assert mismatch(got[0], want[0], "norm") is not None, variant
    assert NORM_TOLERANCE < 1e-5


# -- runs and the command line ---------------------------------------------------------------------


def test_run_config_reports_every_contender_and_the_ratios():
    res = bench.run_config("adam", np.float32, 4096, contenders=["fusedopt", "numpy-inplace", "ceiling", "copy"],
                           rounds=2)  # fmt: skip
    assert set(res["contenders"]) == {"fusedopt", "numpy-inplace", "ceiling", "copy"}
    fo = res["contenders"]["fusedopt"]
    assert fo["samples"] == 2 and fo["best_us"] <= fo["us_per_step"] and fo["gbps"] > 0
    assert "pct_ceiling" in fo and "pct_copy" in fo and res["speedup_vs_numpy-inplace"] > 0


def test_quick_json(capsys):
    assert bench.main(["--quick", "--sizes", "10", "--rounds", "1", "--json", "--no-torch"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["results"]
    assert r["algorithm"] == "adam" and r["n"] == 1024
    assert {"fusedopt", "fusedopt-1t", "numpy-textbook", "numpy-inplace", "ceiling", "copy"} == set(r["contenders"])
    assert doc["header"]["alloc"].startswith("separate buffers placed by fusedopt.arena")


def test_python_dash_m_quick_as_in_the_readme():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run(
        [sys.executable, "-m", "fusedopt.bench", "--quick", "--sizes", "10", "--rounds", "1"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "per contender: µs/step" in out.stdout and "adam      float32  2^10" in out.stdout


@pytest.mark.parametrize(
    ("text", "sizes"), [("12,16", [4096, 65536]), ("2^10", [1024]), ("100", [100]), (" 3 , ", [8])]
)
def test_parse_sizes(text, sizes):
    assert bench.parse_sizes(text) == sizes


def test_parse_errors():
    import argparse

    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_sizes(",")
    with pytest.raises(argparse.ArgumentTypeError):
        bench.parse_list(bench.ALGORITHMS)("adam,nope")
    assert bench.parse_list(bench.ALGORITHMS)("all") == list(bench.ALGORITHMS)


def test_model_shapes():
    for name, tensors, elements in (("digits-mlp", 6, 26122), ("transformer", 196, 1156992), ("resnet18", 62, 11689512)):
        shapes = bench.MODEL_SHAPES[name]()
        assert len(shapes) == tensors and sum(int(np.prod(s)) for s in shapes) == elements


def test_models_benchmark_checks_and_times_every_contender():
    (r,) = bench.models_benchmark(["digits-mlp"], rounds=1, use_torch=False)
    assert r["wrong"] == {}
    assert set(r["us_per_step"]) == {"fusedopt", "fusedopt-arena", "fusedopt-flat"}
    assert r["ratios"]["list/flat"] > 0


def test_models_option_runs_other_algorithms(capsys):
    """``--models ... --algorithms``: fusedopt.torch against torch.optim's implementations of each
    algorithm (Muon: 2-D parameters, the rest AdamW, in both), checked against torch's for-loop step."""
    pytest.importorskip("torch")
    argv = ["--models", "digits-mlp", "--algorithms", "adamax,lamb,muon", "--rounds", "1", "--json"]
    assert bench.main(argv) == 0
    rs = {r["algorithm"]: r for r in json.loads(capsys.readouterr().out)["models"]}
    assert set(rs) == {"adamax", "lamb", "muon"} and all(not r["wrong"] for r in rs.values())
    assert set(rs["adamax"]["us_per_step"]) == {"fusedopt.torch", "torch-foreach", "torch-forloop"}
    assert rs["adamax"]["checked_against"] == "torch-forloop" and rs["adamax"]["torch_best"] in rs["adamax"]["us_per_step"]
    assert f"{rs['muon']['torch_best']}/fusedopt.torch" in rs["muon"]["ratios"]
    assert set(rs["muon"]["us_per_step"]) == {"fusedopt.torch", "torch-fused", "torch-foreach", "torch-forloop"}
    assert set(rs["lamb"]["us_per_step"]) == {"fusedopt.torch"}  # torch.optim has no LAMB:
    assert rs["lamb"]["checked_against"] == "fusedopt.functional"  # checked against the functional step
    with pytest.raises(SystemExit):
        bench.main(["--algorithms", "muon", "--sizes", "10"])  # no element-wise size benchmark


def test_models_muon_split():
    pytest.importorskip("torch")
    mo = bench.models.model_optimizer("muon")
    shapes = bench.transformer_shapes()
    assert mo.rest == "adamw" and all(mo.takes(s) == (len(s) == 2) for s in shapes)
    assert bench.models.model_optimizer("adamax").kwargs == bench.SPECS["adamax"].hyper


# -- DeepSpeed (optional) --------------------------------------------------------------------------


def test_deepspeed_missing_is_skipped_with_a_reason(monkeypatch, capsys):
    monkeypatch.setattr(ds_adam, "_state", {})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "deepspeed" else real(n, *a))
    spec, arrays, alloc = _arrays("adamw", np.float32)
    assert ds_adam.load() is None and ds_adam.raw_op_runner(spec, arrays, alloc) is None
    assert ds_adam.class_step_runner(spec, arrays, alloc) is None
    assert "pip install deepspeed ninja py-cpuinfo" in ds_adam.status()["reason"]
    assert bench.main(["--deepspeed", "--sizes", "10", "--rounds", "1", "--contenders", "fusedopt,deepspeed"]) == 0
    out = capsys.readouterr().out
    assert "DeepSpeed CPU Adam: skipped: deepspeed is not installed" in out
    assert "fusedopt functional, best" in out


def _deepspeed_op():
    if importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (optional; see benchmarks/README.md)")
    if ds_adam.load() is None:
        pytest.skip(f"DeepSpeed's cpu_adam op is not available: {ds_adam.status().get('reason')}")


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("contender", ["deepspeed", "deepspeed-step"])
def test_deepspeed_agrees_with_the_reference(name, contender):
    _deepspeed_op()
    spec, arrays, alloc = _arrays(name, np.float32, n=4099)
    assert verify(spec, arrays, FACTORIES[contender](spec, arrays, alloc)) is None
    assert FACTORIES[contender](spec, _arrays(name, np.float64)[1], alloc) is None
    assert FACTORIES[contender](bench.SPECS["rmsprop"], _arrays("rmsprop", np.float32)[1], alloc) is None


def test_deepspeed_adam_is_not_adamw():
    """The guard tells DeepSpeed's Adam (adamw_mode off) from AdamW: the tolerance is not blind."""
    _deepspeed_op()
    spec, arrays, alloc = _arrays("adamw", np.float32, n=4099)
    as_adam = bench.Spec("adam", spec.state, spec.nonneg, {"lr": 1e-3, "weight_decay": 1e-2})
    assert verify(spec, arrays, ds_adam.raw_op_runner(as_adam, arrays, alloc)) is not None


def test_example_imports_the_model_shapes():
    pytest.importorskip("torch")
    path = ROOT / "examples" / "bench_torch_models.py"
    if not path.exists():  # (the installed-wheel stage of .ci/run copies tests/ only)
        pytest.skip("examples/ is not next to the tests")
    mod_spec = importlib.util.spec_from_file_location("bench_torch_models", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    assert mod.MODELS is bench.MODEL_SHAPES
    assert set(mod.implementations("Adam", False)) == {"fusedopt.torch", "torch fused"}
