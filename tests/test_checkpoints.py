"""Checkpoints: save mid-training, resume in a fresh process, continue bitwise identically.

For every optimizer and flag set (and the FlatParams arena path, several param groups, and
parameters that skip steps), training runs N steps, the parameters and ``state_dict()`` are
saved both as ``.npz`` (flattened by the helpers below) and as a pickle, and a *new Python
process* rebuilds the optimizer, loads each file, and runs N more steps. The result must be
bitwise that of 2N uninterrupted steps.

A truncated or corrupted file, or a checkpoint that does not fit (another optimizer, other
shapes, other parameter/group counts, bad values), is refused with an exception, and the
optimizer is left exactly as it was (it then steps exactly like an untouched twin).

The same holds for a whole training run: optimizer + LR schedule (every kind in
fusedopt.schedules, ReduceLROnPlateau driven by a fixed metric sequence, SequentialLR warm-up ->
cosine, ChainedScheduler) + EMA of the weights, saved together mid-run and resumed in a fresh
process (params, optimizer state, lrs, EMA averages and read-out bitwise equal); damaged files
and schedule/EMA state dicts that do not fit are refused, leaving schedule and EMA unchanged.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
import textwrap
import zipfile
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

import fusedopt

# ------------------------------------------------------------------------------------------------
# Shared by this module and the child process (exec'd in both): configurations, gradients,
# checkpoint format.
# ------------------------------------------------------------------------------------------------
SHARED = textwrap.dedent(
    '''
    import json
    import numpy as np
    import fusedopt

    SHAPES = [(37, 5), (129,), (), (3, 0)]
    N_STEPS = 5

    def initial_params(dtype):
        rng = np.random.default_rng(1234)
        return [np.asarray(rng.standard_normal(s)).astype(dtype) for s in SHAPES]

    def grads_at(step, params, skip):
        """Gradients of one step (a function of the step number only); parameter `skip` has no
        gradient on odd steps (None), as a parameter unused by a forward pass."""
        rng = np.random.default_rng(10_000 + step)
        out = []
        for i, p in enumerate(params):
            g = np.asarray(rng.standard_normal(p.shape)).astype(p.dtype)
            out.append(None if (skip is not None and i == skip and step % 2 == 1) else g)
        return out

    def _groups(params, two_groups):
        if not two_groups:
            return params
        return [{"params": params[:2]}, {"params": params[2:], "lr": 0.003}]

    CONFIGS = {
        "SGD": (lambda p, tg: fusedopt.SGD(_groups(p, tg), lr=0.05), None),
        "SGD-momentum": (lambda p, tg: fusedopt.SGD(_groups(p, tg), lr=0.05, momentum=0.9, weight_decay=1e-2), 1),
        "SGD-nesterov-maximize": (lambda p, tg: fusedopt.SGD(_groups(p, tg), lr=0.05, momentum=0.9, nesterov=True, maximize=True), None),
        "SGD-dampening": (lambda p, tg: fusedopt.SGD(_groups(p, tg), lr=0.05, momentum=0.7, dampening=0.2), 0),
        "Momentum": (lambda p, tg: fusedopt.Momentum(_groups(p, tg), lr=0.05, beta=0.8), 1),
        "Momentum-bias_correction": (lambda p, tg: fusedopt.Momentum(_groups(p, tg), lr=0.05, bias_correction=True, weight_decay=1e-2), None),
        "RMSprop": (lambda p, tg: fusedopt.RMSprop(_groups(p, tg), lr=1e-2), None),
        "RMSprop-centered-momentum": (lambda p, tg: fusedopt.RMSprop(_groups(p, tg), lr=1e-2, centered=True, momentum=0.9, weight_decay=1e-2), 1),
        "RMSprop-momentum-maximize": (lambda p, tg: fusedopt.RMSprop(_groups(p, tg), lr=1e-2, momentum=0.5, maximize=True), None),
        "Adam": (lambda p, tg: fusedopt.Adam(_groups(p, tg), lr=1e-2), None),
        "Adam-amsgrad-l2": (lambda p, tg: fusedopt.Adam(_groups(p, tg), lr=1e-2, amsgrad=True, weight_decay=1e-2), 1),
        "Adam-decoupled-maximize": (lambda p, tg: fusedopt.Adam(_groups(p, tg), lr=1e-2, betas=(0.8, 0.95), decoupled_weight_decay=True, weight_decay=0.1, maximize=True), None),
        "AdamW": (lambda p, tg: fusedopt.AdamW(_groups(p, tg), lr=1e-2), 0),
        "AdamW-amsgrad": (lambda p, tg: fusedopt.AdamW(_groups(p, tg), lr=1e-2, amsgrad=True), None),
        "Adagrad": (lambda p, tg: fusedopt.Adagrad(_groups(p, tg), lr=0.1, lr_decay=1e-2, initial_accumulator_value=0.1), 1),
        "Adagrad-maximize-wd": (lambda p, tg: fusedopt.Adagrad(_groups(p, tg), lr=0.1, weight_decay=1e-2, eps=1e-6, maximize=True), None),
    }

    def build(name, dtype, variant):
        """variant: 'plain', 'groups' (two param groups) or 'arena' (FlatParams)."""
        make, skip = CONFIGS[name]
        params = initial_params(dtype)
        if variant == "arena":
            arena = fusedopt.FlatParams(params)
            return make(arena, False), arena.params, arena, None
        opt = make(params, variant == "groups")
        return opt, params, None, skip

    def run_steps(opt, params, arena, skip, first, last):
        for step in range(first, last):
            g = grads_at(step, params, skip)
            if arena is not None:
                for view, gi in zip(arena.grads, g):
                    view[...] = gi
                opt.step()
            else:
                opt.step(g)

    # -- checkpoint format: state_dict flattened into named arrays + one JSON header -------------
    def flatten(sd, params):
        out = {}
        groups = []
        for g in sd["param_groups"]:
            groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
        out["__header__"] = np.array(json.dumps({"param_groups": groups, "n_params": len(params)}))
        for i, st in sd["state"].items():
            for k, v in st.items():
                out[f"state/{i}/{k}"] = np.asarray(v)
        for i, p in enumerate(params):
            out[f"param/{i}"] = p
        return out

    def unflatten(arrays):
        header = json.loads(str(arrays["__header__"][()]))
        groups = []
        for g in header["param_groups"]:
            groups.append({k: (tuple(v) if k == "betas" else v) for k, v in g.items()})
        state = {}
        for key in arrays:
            if not key.startswith("state/"):
                continue
            _, i, k = key.split("/", 2)
            v = arrays[key]
            state.setdefault(int(i), {})[k] = int(v) if k == "step" else np.array(v)
        params = [np.array(arrays[f"param/{i}"]) for i in range(header["n_params"])]
        return {"state": state, "param_groups": groups}, params

    def save_npz(path, sd, params):
        np.savez(path, **flatten(sd, params))

    def load_npz(path):
        # zip members carry a CRC32: a flipped byte in an array raises zipfile.BadZipFile on read
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return unflatten({k: z[k] for k in z.files})

    # pickle has no integrity check of its own: a flipped byte inside an array's data unpickles
    # fine, with other values. The pickle checkpoint therefore carries a SHA-256 of its payload.
    import hashlib, pickle

    def save_pickle(path, sd, params):
        payload = pickle.dumps((sd, [np.array(p) for p in params]), protocol=pickle.HIGHEST_PROTOCOL)
        with open(path, "wb") as fh:
            fh.write(hashlib.sha256(payload).digest() + payload)

    def load_pickle(path):
        with open(path, "rb") as fh:
            blob = fh.read()
        digest, payload = blob[:32], blob[32:]
        if len(digest) != 32 or hashlib.sha256(payload).digest() != digest:
            raise ValueError(f"checkpoint {path} is damaged (SHA-256 mismatch)")
        return pickle.loads(payload)
    '''
)

ns: Dict[str, Any] = {}
exec(compile(SHARED, "<checkpoint-shared>", "exec"), ns)  # the shared test code above

CHILD = SHARED + textwrap.dedent(
    """
    import sys
    # argv: jobs.json
    with open(sys.argv[1]) as fh:
        jobs = json.load(fh)
    for job in jobs:
        name, dtype, variant, fmt, src, dst = job
        dtype = np.dtype(dtype)
        opt, params, arena, skip = build(name, dtype, variant)
        sd, saved = load_npz(src) if fmt == "npz" else load_pickle(src)
        for p, s in zip(params, saved):
            p[...] = s
        opt.load_state_dict(sd)
        run_steps(opt, params, arena, skip, N_STEPS, 2 * N_STEPS)
        save_npz(dst, opt.state_dict(), params)
    print("child done", len(jobs))
    """
)

VARIANTS = ["plain", "groups", "arena"]


def _final(opt: Any, params: List[np.ndarray]) -> Dict[str, bytes]:
    flat = ns["flatten"](opt.state_dict(), params)
    return {k: np.asarray(v).tobytes() for k, v in flat.items()}


def _final_from_file(path: str) -> Dict[str, bytes]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].tobytes() for k in z.files}


def test_resume_in_fresh_process_is_bitwise(tmp_path: Any) -> None:
    """Every configuration x {plain, 2 groups, arena} x {float32, float64} x {npz, pickle}: one child
    process resumes them all."""
    n = ns["N_STEPS"]
    jobs = []
    expected: Dict[str, Dict[str, bytes]] = {}
    for name in ns["CONFIGS"]:
        for variant in VARIANTS:
            for dtype in ("float32", "float64"):
                # uninterrupted run
                opt, params, arena, skip = ns["build"](name, np.dtype(dtype), variant)
                ns["run_steps"](opt, params, arena, skip, 0, 2 * n)
                want = _final(opt, params)
                # interrupted run: N steps, save both formats
                opt, params, arena, skip = ns["build"](name, np.dtype(dtype), variant)
                ns["run_steps"](opt, params, arena, skip, 0, n)
                sd = opt.state_dict()
                tag = f"{name}-{variant}-{dtype}"
                npz = str(tmp_path / f"{tag}.npz")
                pkl = str(tmp_path / f"{tag}.pkl")
                ns["save_npz"](npz, sd, params)
                ns["save_pickle"](pkl, sd, params)
                for fmt, src in (("npz", npz), ("pickle", pkl)):
                    dst = str(tmp_path / f"{tag}-{fmt}-resumed.npz")
                    jobs.append((name, dtype, variant, fmt, src, dst))
                    expected[dst] = want
    script = tmp_path / "resume.py"
    script.write_text(CHILD)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "jobs.json")], capture_output=True, text=True,
                         env=env, cwd=str(tmp_path), timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    bad = []
    for dst, want in expected.items():
        got = _final_from_file(dst)
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            bad.append(f"{os.path.basename(dst)}: {diff[:6]}")
    assert not bad, "resumed runs differ from uninterrupted runs:\n" + "\n".join(bad)


def test_state_dict_roundtrip_format_is_lossless() -> None:
    """The npz flattening used above loses nothing (keys, ints, tuples, dtypes)."""
    opt, params, arena, skip = ns["build"]("Adam-amsgrad-l2", np.dtype(np.float32), "groups")
    ns["run_steps"](opt, params, arena, skip, 0, 3)
    sd = opt.state_dict()
    back, _ = ns["unflatten"]({k: np.asarray(v) for k, v in ns["flatten"](sd, params).items()})
    assert back["param_groups"] == sd["param_groups"]
    assert set(back["state"]) == set(sd["state"])
    for i, st in sd["state"].items():
        assert set(st) == set(back["state"][i])
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                assert v.dtype == back["state"][i][k].dtype and v.tobytes() == back["state"][i][k].tobytes()
            else:
                assert v == back["state"][i][k] and type(v) is type(back["state"][i][k])


# ------------------------------------------------------------------------------------------------
# refused checkpoints
# ------------------------------------------------------------------------------------------------
def _snap(opt: Any) -> Any:
    st = [tuple(sorted((k, v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in s.items())) for s in opt.state]
    gr = [tuple(sorted((k, repr(v)) for k, v in g.items())) for g in opt.param_groups]
    return st, gr, [p.tobytes() for p in opt.params]


def _trained(name: str = "Adam-amsgrad-l2", variant: str = "plain") -> Any:
    opt, params, arena, skip = ns["build"](name, np.dtype(np.float32), variant)
    ns["run_steps"](opt, params, arena, skip, 0, 3)
    return opt, params, arena, skip


def _assert_untouched_and_usable(trained: Tuple[Any, ...], before: Any, name: str, variant: str = "plain") -> None:
    opt, params, arena, skip = trained
    assert _snap(opt) == before, "a refused checkpoint changed the optimizer"
    twin, tparams, tarena, tskip = _trained(name, variant)
    ns["run_steps"](twin, tparams, tarena, tskip, 3, 5)
    ns["run_steps"](opt, params, arena, skip, 3, 5)
    assert _snap(opt) == _snap(twin), "after a refused load the optimizer no longer steps like its twin"


def _corrupt_bytes(path: str, where: float) -> None:
    data = bytearray(pathlib.Path(path).read_bytes())
    k = int(len(data) * where)
    for j in range(k, min(k + 16, len(data))):
        data[j] ^= 0xA5
    pathlib.Path(path).write_bytes(bytes(data))


def _truncate(path: str, frac: float) -> None:
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: int(len(data) * frac)])


def _load_npz_into(opt: Any, path: str) -> None:
    sd, _ = ns["load_npz"](path)
    opt.load_state_dict(sd)


def _load_pickle_into(opt: Any, path: str) -> None:
    sd, _ = ns["load_pickle"](path)
    opt.load_state_dict(sd)


@pytest.mark.parametrize("damage", ["truncate-10%", "truncate-50%", "truncate-99%", "flip-middle", "flip-end"])
@pytest.mark.parametrize("fmt", ["npz", "pickle"])
def test_damaged_file_refused(tmp_path: Any, fmt: str, damage: str) -> None:
    src, params, arena, skip = _trained()
    path = str(tmp_path / ("ck.npz" if fmt == "npz" else "ck.pkl"))
    if fmt == "npz":
        ns["save_npz"](path, src.state_dict(), params)
    else:
        ns["save_pickle"](path, src.state_dict(), params)
    if damage.startswith("truncate"):
        _truncate(path, int(damage.split("-")[1].rstrip("%")) / 100)
    else:
        _corrupt_bytes(path, 0.5 if damage == "flip-middle" else 0.97)
    trained = _trained()
    opt = trained[0]
    before = _snap(opt)
    load = _load_npz_into if fmt == "npz" else _load_pickle_into
    errors = (ValueError, TypeError, KeyError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError,
              UnicodeDecodeError, json.JSONDecodeError, IndexError, AttributeError)  # fmt: skip
    try:
        load(opt, path)
    except errors:
        pass
    else:
        # A flip can land in bytes nobody reads (e.g. zip padding); then the checkpoint must still
        # have loaded *exactly* what was saved.
        assert _snap(opt)[:2] == _snap(src)[:2], f"{damage}: a damaged {fmt} loaded different values silently"
        return
    _assert_untouched_and_usable(trained, before, "Adam-amsgrad-l2")


def _edit(sd: Dict[str, Any], fn: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    out = {"state": {i: dict(s) for i, s in sd["state"].items()}, "param_groups": [dict(g) for g in sd["param_groups"]]}
    fn(out)
    return out


MISMATCHES: Dict[str, Callable[[Dict[str, Any]], None]] = {
    "state-array-wrong-shape": lambda sd: sd["state"][0].__setitem__("exp_avg", np.zeros((5, 37), np.float32)),
    "state-array-wrong-dtype": lambda sd: sd["state"][0].__setitem__("exp_avg", sd["state"][0]["exp_avg"].astype(np.float64)),
    "state-array-not-array": lambda sd: sd["state"][1].__setitem__("exp_avg_sq", [0.0] * 129),
    "state-missing-array": lambda sd: sd["state"][0].pop("exp_avg_sq"),
    "state-unknown-key": lambda sd: sd["state"][0].__setitem__("momentum_buffer", np.zeros((37, 5), np.float32)),
    "step-negative": lambda sd: sd["state"][0].__setitem__("step", -1),
    "step-fraction": lambda sd: sd["state"][0].__setitem__("step", 2.5),
    "step-string": lambda sd: sd["state"][0].__setitem__("step", "3"),
    "step-missing": lambda sd: sd["state"][0].pop("step"),
    "unknown-param-index": lambda sd: sd["state"].__setitem__(17, dict(sd["state"][0])),
    "lr-nan": lambda sd: sd["param_groups"][0].__setitem__("lr", float("nan")),
    "betas-out-of-range": lambda sd: sd["param_groups"][0].__setitem__("betas", (0.9, 1.0)),
    "hyper-missing": lambda sd: sd["param_groups"][0].pop("eps"),
    "amsgrad-not-bool": lambda sd: sd["param_groups"][0].__setitem__("amsgrad", "yes"),
    "too-many-params-in-group": lambda sd: sd["param_groups"][0].__setitem__("params", [0, 1, 2, 3, 4]),
    "extra-group": lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])),
    "no-groups": lambda sd: sd["param_groups"].clear(),
    "state-not-dict": lambda sd: sd.__setitem__("state", [1, 2]),
    "last-entry-bad": lambda sd: sd["state"][max(sd["state"])].__setitem__("exp_avg", np.zeros(3, np.float32)),
}  # fmt: skip


@pytest.mark.parametrize("what", sorted(MISMATCHES))
def test_mismatched_state_dict_refused(what: str) -> None:
    src, _, _, _ = _trained()
    sd = _edit(src.state_dict(), MISMATCHES[what])
    trained = _trained()
    opt = trained[0]
    before = _snap(opt)
    with pytest.raises((ValueError, TypeError)):
        opt.load_state_dict(sd)
    _assert_untouched_and_usable(trained, before, "Adam-amsgrad-l2")


@pytest.mark.parametrize(
    "src_name, dst_name",
    [("SGD-momentum", "Adam-amsgrad-l2"), ("Adam-amsgrad-l2", "RMSprop-centered-momentum"),
     ("RMSprop-centered-momentum", "Adagrad"), ("Adagrad", "Momentum"), ("Momentum", "SGD-momentum"),
     ("Adam", "AdamW-amsgrad")],
    ids=lambda s: s,
)  # fmt: skip
def test_other_optimizer_checkpoint_refused(src_name: str, dst_name: str) -> None:
    src, _, _, _ = _trained(src_name)
    trained = _trained(dst_name)
    opt = trained[0]
    before = _snap(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(src.state_dict())
    _assert_untouched_and_usable(trained, before, dst_name)


def test_other_shapes_checkpoint_refused() -> None:
    src = fusedopt.Adam([np.zeros((36, 5), np.float32), np.zeros(129, np.float32), np.zeros((), np.float32),
                         np.zeros((3, 0), np.float32)], lr=1e-2, amsgrad=True, weight_decay=1e-2)  # fmt: skip
    src.step([np.ones_like(p) for p in src.params])
    trained = _trained()
    opt = trained[0]
    before = _snap(opt)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(src.state_dict())
    _assert_untouched_and_usable(trained, before, "Adam-amsgrad-l2")


def test_arena_checkpoint_of_other_size_refused() -> None:
    src = fusedopt.Adam(fusedopt.FlatParams([np.zeros(10, np.float32)]), lr=1e-2, amsgrad=True, weight_decay=1e-2)
    src.step()
    trained = _trained(variant="arena")
    opt = trained[0]
    before = _snap(opt)
    with pytest.raises(ValueError):
        opt.load_state_dict(src.state_dict())
    _assert_untouched_and_usable(trained, before, "Adam-amsgrad-l2", "arena")


def test_loaded_state_is_a_copy() -> None:
    """Mutating the loaded dict (or the file's arrays) afterwards does not reach the optimizer."""
    src, _, _, _ = _trained()
    sd = src.state_dict()
    opt, _, _, _ = _trained()
    opt.load_state_dict(sd)
    snap = _snap(opt)
    for st in sd["state"].values():
        for v in st.values():
            if isinstance(v, np.ndarray):
                v[...] = 7
    sd["param_groups"][0]["lr"] = 123.0
    assert _snap(opt) == snap


# ------------------------------------------------------------------------------------------------
# Training checkpoints: optimizer + LR schedule + EMA of the weights
# ------------------------------------------------------------------------------------------------
# Each run trains TRAIN_STEPS steps (grads -> opt.step -> ema.update -> sched.step), saves the
# optimizer's, the schedule's and the EMA's state dicts with the parameters (pickle, and .npz with
# the schedule and the EMA header as JSON members and the EMA averages as arrays), and a fresh
# process rebuilds everything, loads the file (optimizer first or schedule first) and trains
# TRAIN_STEPS more steps. Parameters, all three state dicts, the lrs after every step and the
# EMA read-out must be bitwise those of an uninterrupted run.
TRAIN_SHARED = textwrap.dedent(
    '''
    import types
    from fusedopt import schedules as S

    TRAIN_STEPS = 6  # steps before the checkpoint, and as many after it

    # The metric the ReduceLROnPlateau runs monitor (a function of the step only): it improves,
    # stalls (a reduction before the checkpoint), improves, stalls again (reductions after it).
    METRIC = [5.0, 4.0, 4.0, 4.1, 3.0, 3.05, 3.2, 3.1, 3.3, 2.0, 2.5, 2.6]

    def _warmup_then_cosine(o, warmup, decay):
        return S.SequentialLR(o, [S.LinearLR(o, 0.1, 1.0, warmup), S.WarmupCosine(o, 0, decay, min_lr=1e-4)],
                              milestones=[warmup])

    # name: (optimizer config in CONFIGS, variant, schedule, EMA arguments, metric or None)
    TRAIN_CONFIGS = {
        "ExponentialLR": ("Adam-amsgrad-l2", "groups", lambda o: S.ExponentialLR(o, 0.9), dict(decay=0.9), None),
        "ExponentialLR-staircase": ("SGD-momentum", "plain", lambda o: S.ExponentialLR(o, 0.8, decay_steps=2.5, staircase=True),
                                    dict(decay=0.8, bias_correction=False), None),
        "StepLR": ("RMSprop-centered-momentum", "groups", lambda o: S.StepLR(o, 4, 0.5), dict(decay=0.75), None),
        "MultiStepLR": ("AdamW", "arena", lambda o: S.MultiStepLR(o, [2, 5, 9], 0.3),
                        dict(decay=0.95, bias_correction=False), None),
        "LinearLR": ("Momentum-bias_correction", "groups", lambda o: S.LinearLR(o, 0.1, 0.9, 9), dict(decay=0.5), None),
        "WarmupCosine": ("Adam", "groups", lambda o: S.WarmupCosine(o, 3, 10, min_lr=[1e-4, 2e-5], warmup_start_factor=0.05),
                         dict(decay=0.9), None),
        "InverseTimeLR": ("Adagrad", "plain", lambda o: S.InverseTimeLR(o, 0.5, decay_steps=3, staircase=True),
                          dict(decay=0.6), None),
        "ReduceLROnPlateau-min-rel": ("Adam-amsgrad-l2", "groups",
                                      lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=1, threshold=1e-2),
                                      dict(decay=0.9), lambda t: METRIC[t]),
        "ReduceLROnPlateau-max-abs": ("SGD-nesterov-maximize", "arena",
                                      lambda o: S.ReduceLROnPlateau(o, mode="max", factor=0.7, patience=0, threshold=0.05,
                                                                    threshold_mode="abs", cooldown=2, min_lr=0.02),
                                      dict(decay=0.8, bias_correction=False), lambda t: -METRIC[t]),
        "SequentialLR-warmup-cosine": ("AdamW-amsgrad", "groups", lambda o: _warmup_then_cosine(o, 4, 8), dict(decay=0.9), None),
        "SequentialLR-warmup-ends-after-resume": ("Adam", "plain", lambda o: _warmup_then_cosine(o, 8, 6),
                                                  dict(decay=0.99), None),
        "SequentialLR-three": ("RMSprop", "groups",
                               lambda o: S.SequentialLR(o, [S.LinearLR(o, 0.2, 1.0, 2), S.StepLR(o, 2, 0.5), S.ExponentialLR(o, 0.9)],
                                                        milestones=[2, 7]),
                               dict(decay=0.9), None),
        "ChainedScheduler": ("Adagrad-maximize-wd", "groups",
                             lambda o: S.ChainedScheduler([S.ExponentialLR(o, 0.95), S.MultiStepLR(o, [3, 8], 0.5),
                                                           S.LinearLR(o, 0.5, 1.0, 5)]),
                             dict(decay=0.9), None),
    }

    def build_training(name, dtype):
        opt_name, variant, make_sched, ema_kw, _ = TRAIN_CONFIGS[name]
        opt, params, arena, skip = build(opt_name, dtype, variant)
        sched = make_sched(opt)
        ema = fusedopt.EMA(arena if arena is not None else params, **ema_kw)
        return types.SimpleNamespace(name=name, opt=opt, sched=sched, ema=ema, params=params, arena=arena, skip=skip,
                                     lrs=[])

    def current_lrs(run):
        return {"groups": [g["lr"] for g in run.opt.param_groups], "last": run.sched.get_last_lr()}

    def train(run, first, last):
        metric = TRAIN_CONFIGS[run.name][4]
        for step in range(first, last):
            run_steps(run.opt, run.params, run.arena, run.skip, step, step + 1)
            run.ema.update()
            if metric is None:
                run.sched.step()
            else:
                run.sched.step(metric(step))
            run.lrs.append(current_lrs(run))

    def checkpoint(run):
        return run.opt.state_dict(), run.sched.state_dict(), run.ema.state_dict(), [np.array(p) for p in run.params]

    def restore(run, opt_sd, sched_sd, ema_sd, params, order):
        for p, s in zip(run.params, params):
            p[...] = s
        if order == "optimizer-first":
            run.opt.load_state_dict(opt_sd)
            run.sched.load_state_dict(sched_sd)
        else:
            run.sched.load_state_dict(sched_sd)
            run.opt.load_state_dict(opt_sd)
        run.ema.load_state_dict(ema_sd)

    # -- file formats: npz (schedule state and EMA header as JSON, averages as arrays), pickle --------
    def flatten_training(opt_sd, sched_sd, ema_sd, params):
        out = flatten(opt_sd, params)
        out["__schedule__"] = np.array(json.dumps(sched_sd))
        head = {k: v for k, v in ema_sd.items() if k != "averages"}
        head["n_averages"] = len(ema_sd["averages"])
        out["__ema__"] = np.array(json.dumps(head))
        for i, a in enumerate(ema_sd["averages"]):
            out[f"ema/{i}"] = np.asarray(a)
        return out

    def unflatten_training(arrays):
        opt_sd, params = unflatten(arrays)
        sched_sd = json.loads(str(arrays["__schedule__"][()]))
        ema_sd = json.loads(str(arrays["__ema__"][()]))
        ema_sd["averages"] = [np.array(arrays[f"ema/{i}"]) for i in range(ema_sd.pop("n_averages"))]
        return opt_sd, sched_sd, ema_sd, params

    def save_training_npz(path, opt_sd, sched_sd, ema_sd, params):
        np.savez(path, **flatten_training(opt_sd, sched_sd, ema_sd, params))

    def load_training_npz(path):
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            return unflatten_training({k: z[k] for k in z.files})

    def save_training_pickle(path, opt_sd, sched_sd, ema_sd, params):
        save_pickle(path, {"optimizer": opt_sd, "schedule": sched_sd, "ema": ema_sd}, params)

    def load_training_pickle(path):
        sds, params = load_pickle(path)
        return sds["optimizer"], sds["schedule"], sds["ema"], params

    def training_record(run):
        """What must match bitwise: parameters, the three state dicts, the lrs after each step
        (run.lrs), the EMA read-out."""
        out = flatten_training(run.opt.state_dict(), run.sched.state_dict(), run.ema.state_dict(), run.params)
        out["__lrs__"] = np.array(json.dumps(run.lrs))
        for i, a in enumerate(run.ema.averaged()):
            out[f"averaged/{i}"] = a
        return out
    '''
)

exec(compile(TRAIN_SHARED, "<checkpoint-training-shared>", "exec"), ns)  # on top of SHARED

CHILD_TRAIN_MAIN = textwrap.dedent(
    """
    import sys
    with open(sys.argv[1]) as fh:
        jobs = json.load(fh)
    for name, dtype, fmt, order, src, dst in jobs:
        run = build_training(name, np.dtype(dtype))
        ck = load_training_npz(src) if fmt == "npz" else load_training_pickle(src)
        restore(run, *ck, order)
        run.lrs = [current_lrs(run)]  # the lrs right after loading, then after each step
        train(run, TRAIN_STEPS, 2 * TRAIN_STEPS)
        np.savez(dst, **training_record(run))
    print("child done", len(jobs))
    """
)
CHILD_TRAIN = SHARED + TRAIN_SHARED + CHILD_TRAIN_MAIN

TRAIN_CONFIGS: Dict[str, Any] = ns["TRAIN_CONFIGS"]
ORDERS = ["optimizer-first", "schedule-first"]


def _typed(x: Any) -> Any:
    """x with the type of every leaf attached (1 and 1.0 and True differ)."""
    if isinstance(x, dict):
        return {k: _typed(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [_typed(v) for v in x])
    if isinstance(x, np.ndarray):
        return ("ndarray", x.dtype.str, x.shape, x.tobytes())
    return (type(x).__name__, repr(x))


def _record(rec: Dict[str, Any]) -> Dict[str, Tuple[str, Tuple[int, ...], bytes]]:
    return {k: (np.asarray(v).dtype.str, np.asarray(v).shape, np.asarray(v).tobytes()) for k, v in rec.items()}


def _lr_changes(lrs: List[Dict[str, Any]], first: int, last: int) -> bool:
    return any(lrs[t]["groups"] != lrs[t - 1]["groups"] for t in range(max(first, 1), last))


def test_training_resume_in_fresh_process_is_bitwise(tmp_path: Any) -> None:
    """Every schedule kind x {float32, float64} x {npz, pickle} x {optimizer loaded first, schedule
    loaded first}: one child process resumes them all."""
    n = ns["TRAIN_STEPS"]
    jobs = []
    expected: Dict[str, Dict[str, Tuple[str, Tuple[int, ...], bytes]]] = {}
    for name in TRAIN_CONFIGS:
        for dtype in ("float32", "float64"):
            full = ns["build_training"](name, np.dtype(dtype))
            ns["train"](full, 0, 2 * n)
            # the test is only as good as its schedules: each must move the lr on both sides of the checkpoint
            assert _lr_changes(full.lrs, 0, n) and _lr_changes(full.lrs, n, 2 * n), f"{name}: lr constant on one side"
            full.lrs = full.lrs[n - 1 :]  # at the checkpoint, then after each resumed step
            want = _record(ns["training_record"](full))
            run = ns["build_training"](name, np.dtype(dtype))
            ns["train"](run, 0, n)
            ck = ns["checkpoint"](run)
            tag = f"train-{name}-{dtype}"
            files = {"npz": str(tmp_path / f"{tag}.npz"), "pickle": str(tmp_path / f"{tag}.pkl")}
            ns["save_training_npz"](files["npz"], *ck)
            ns["save_training_pickle"](files["pickle"], *ck)
            for fmt, src in files.items():
                for order in ORDERS:
                    dst = str(tmp_path / f"{tag}-{fmt}-{order}-resumed.npz")
                    jobs.append((name, dtype, fmt, order, src, dst))
                    expected[dst] = want
    script = tmp_path / "resume_training.py"
    script.write_text(CHILD_TRAIN)
    (tmp_path / "train_jobs.json").write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    res = subprocess.run([sys.executable, str(script), str(tmp_path / "train_jobs.json")], capture_output=True,
                         text=True, env=env, cwd=str(tmp_path), timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    bad = []
    for dst, want in expected.items():
        with np.load(dst, allow_pickle=False) as z:
            got = _record({k: z[k] for k in z.files})
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            bad.append(f"{os.path.basename(dst)}: {diff[:6]}")
    assert not bad, "resumed training differs from the uninterrupted run:\n" + "\n".join(bad)


@pytest.mark.parametrize("fmt", ["npz", "pickle"])
@pytest.mark.parametrize("name", list(TRAIN_CONFIGS))
def test_training_checkpoint_format_is_lossless(tmp_path: Any, name: str, fmt: str) -> None:
    """The files hold exactly the state dicts: keys, values and Python types of the schedule's
    (ints stay ints, inf stays inf, nested schedulers), the EMA's arrays bitwise with their dtypes."""
    run = ns["build_training"](name, np.dtype(np.float32))
    ns["train"](run, 0, ns["TRAIN_STEPS"])
    ck = ns["checkpoint"](run)
    path = str(tmp_path / ("ck.npz" if fmt == "npz" else "ck.pkl"))
    if fmt == "npz":
        ns["save_training_npz"](path, *ck)
        back = ns["load_training_npz"](path)
    else:
        ns["save_training_pickle"](path, *ck)
        back = ns["load_training_pickle"](path)
    assert _typed(back[1]) == _typed(ck[1])
    assert _typed(back[2]) == _typed(ck[2])
    assert [_typed(p) for p in back[3]] == [_typed(p) for p in ck[3]]


# -- refused schedule and EMA checkpoints ---------------------------------------------------------
def _trained_run(name: str, steps: int = 3, dtype: Any = np.float32) -> Any:
    run = ns["build_training"](name, np.dtype(dtype))
    ns["train"](run, 0, steps)
    return run


def _run_snap(run: Any) -> Any:
    ema = run.ema.state_dict()
    averages = [(a.dtype.str, a.shape, a.tobytes()) for a in ema.pop("averages")]
    readout = [a.tobytes() for a in run.ema.averaged()]
    return _snap(run.opt), _typed(run.sched.state_dict()), run.sched.get_last_lr(), _typed(ema), averages, readout


def _assert_run_untouched_and_usable(run: Any, before: Any) -> None:
    assert _run_snap(run) == before, "a refused checkpoint changed the optimizer, the schedule or the EMA"
    twin = _trained_run(run.name)
    ns["train"](twin, 3, 7)
    ns["train"](run, 3, 7)
    assert _run_snap(run) == _run_snap(twin), "after a refused load the run no longer trains like its twin"
    assert run.lrs == twin.lrs


def _find(data: bytes, needle: bytes) -> int:
    k = data.find(needle)
    assert k >= 0, "the bytes to damage are not in the file"
    return k


def _damage_training_file(path: str, fmt: str, damage: str, ema_average: np.ndarray) -> None:
    if damage.startswith("truncate"):
        _truncate(path, int(damage.split("-")[1].rstrip("%")) / 100)
        return
    if damage in ("flip-middle", "flip-end"):
        _corrupt_bytes(path, 0.5 if damage == "flip-middle" else 0.97)
        return
    data = bytearray(pathlib.Path(path).read_bytes())
    # npz stores the JSON members as UTF-32 strings, pickle its str keys as UTF-8
    enc = "utf-32-le" if fmt == "npz" else "utf-8"
    needle = {"flip-schedule": '"last_epoch"' if fmt == "npz" else "last_epoch",
              "flip-ema-header": '"bias_correction"' if fmt == "npz" else "bias_correction"}  # fmt: skip
    if damage == "flip-ema-average":
        k = _find(bytes(data), ema_average.tobytes()) + 40
    else:
        k = _find(bytes(data), needle[damage].encode(enc))
    for j in range(k, k + 16):
        data[j] ^= 0xA5
    pathlib.Path(path).write_bytes(bytes(data))


TRAIN_DAMAGES = ["truncate-10%", "truncate-50%", "truncate-99%", "flip-middle", "flip-end", "flip-schedule",
                 "flip-ema-header", "flip-ema-average"]  # fmt: skip


@pytest.mark.parametrize("damage", TRAIN_DAMAGES)
@pytest.mark.parametrize("fmt", ["npz", "pickle"])
@pytest.mark.parametrize("name", ["SequentialLR-warmup-cosine", "ReduceLROnPlateau-min-rel"])
def test_damaged_training_file_refused(tmp_path: Any, name: str, fmt: str, damage: str) -> None:
    src = _trained_run(name, 5)
    ck = ns["checkpoint"](src)
    path = str(tmp_path / ("ck.npz" if fmt == "npz" else "ck.pkl"))
    (ns["save_training_npz"] if fmt == "npz" else ns["save_training_pickle"])(path, *ck)
    _damage_training_file(path, fmt, damage, ck[2]["averages"][1])
    run = _trained_run(name)
    before = _run_snap(run)
    errors = (ValueError, TypeError, KeyError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError,
              UnicodeDecodeError, json.JSONDecodeError, IndexError, AttributeError)  # fmt: skip
    try:
        loaded = ns["load_training_npz"](path) if fmt == "npz" else ns["load_training_pickle"](path)
    except errors as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
    else:
        # A flip can land in bytes nobody reads; then exactly what was saved must load.
        assert not damage.startswith("flip-e") and damage != "flip-schedule", f"{damage}: damaged data read silently"
        ns["restore"](run, *loaded, "optimizer-first")
        assert _run_snap(run) == _run_snap(src), f"{damage}: a damaged {fmt} loaded different values silently"
        return
    _assert_run_untouched_and_usable(run, before)


def _set(path: Tuple[Any, ...], value: Any) -> Callable[[Any], Any]:
    def edit(sd: Any) -> Any:
        node = sd
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return sd

    return edit


def _pop(path: Tuple[Any, ...]) -> Callable[[Any], Any]:
    def edit(sd: Any) -> Any:
        node = sd
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return sd

    return edit


def _donor_schedule(name: str) -> Callable[[Any], Any]:
    return lambda sd: _trained_run(name, 5).sched.state_dict()


def _swap_children(sd: Any) -> Any:
    sd["schedulers"].reverse()
    return sd


SCHEDULE_MISMATCHES: List[Tuple[str, str, Callable[[Any], Any], str]] = [
    # (id, run config, edit of a donor's schedule state dict, message)
    ("not-a-dict", "ExponentialLR", lambda sd: list(sd.items()), "dict"),
    ("type-renamed", "ExponentialLR", _set(("type",), "InverseTimeLR"), "InverseTimeLR"),
    ("other-kind-StepLR", "ExponentialLR", _donor_schedule("StepLR"), "lacks|unknown|StepLR"),
    ("other-group-count", "ExponentialLR", _donor_schedule("ExponentialLR-staircase"), "base_lrs"),
    ("last_epoch-negative", "ExponentialLR", _set(("last_epoch",), -1), "last_epoch"),
    ("last_epoch-fraction", "ExponentialLR", _set(("last_epoch",), 4.5), "last_epoch"),
    ("last_epoch-string", "ExponentialLR", _set(("last_epoch",), "5"), "last_epoch"),
    ("last_epoch-missing", "ExponentialLR", _pop(("last_epoch",)), "last_epoch"),
    ("base_lrs-nan", "ExponentialLR", _set(("base_lrs", 0), float("nan")), r"base_lrs\[0\]"),
    ("base_lrs-negative", "ExponentialLR", _set(("base_lrs", 1), -0.1), r"base_lrs\[1\]"),
    ("base_lrs-empty", "ExponentialLR", _set(("base_lrs",), []), "base_lrs"),
    ("gamma-missing", "ExponentialLR", _pop(("gamma",)), "gamma"),
    ("gamma-zero", "ExponentialLR", _set(("gamma",), 0.0), "gamma"),
    ("gamma-string", "ExponentialLR", _set(("gamma",), "0.9"), "gamma"),
    ("unknown-key", "ExponentialLR", _set(("momentum",), 0.9), "unknown"),
    ("lr-overflows", "ExponentialLR", lambda sd: {**sd, "gamma": 1e10, "last_epoch": 10**4}, "."),
    ("decay_steps-zero", "ExponentialLR-staircase", _set(("decay_steps",), 0), "decay_steps"),
    ("staircase-not-bool", "ExponentialLR-staircase", _set(("staircase",), "yes"), "staircase"),
    ("step_size-zero", "StepLR", _set(("step_size",), 0), "step_size"),
    ("step_size-float", "StepLR", _set(("step_size",), 4.0), "step_size"),
    ("milestones-decreasing", "MultiStepLR", _set(("milestones",), [5, 2, 9]), "milestones"),
    ("milestones-string", "MultiStepLR", _set(("milestones",), "2,5,9"), "milestones"),
    ("end_factor-above-1", "LinearLR", _set(("end_factor",), 1.5), "end_factor"),
    ("total_iters-zero", "LinearLR", _set(("total_iters",), 0), "total_iters"),
    ("total_steps-before-warmup", "WarmupCosine", _set(("total_steps",), 2), "total_steps"),
    ("min_lr-other-group-count", "WarmupCosine", _set(("min_lr",), [0.0, 0.0, 0.0]), "min_lr"),
    ("min_lr-negative", "WarmupCosine", _set(("min_lr", 1), -1e-5), r"min_lr\[1\]"),
    ("decay_rate-negative", "InverseTimeLR", _set(("decay_rate",), -0.5), "decay_rate"),
    ("plateau-lrs-other-group-count", "ReduceLROnPlateau-min-rel", _set(("lrs",), [0.01]), "lrs"),
    ("plateau-lr-negative", "ReduceLROnPlateau-min-rel", _set(("lrs", 1), -1.0), r"lrs\[1\]"),
    ("plateau-best-nan", "ReduceLROnPlateau-min-rel", _set(("best",), float("nan")), "best"),
    ("plateau-best-string", "ReduceLROnPlateau-min-rel", _set(("best",), "4.0"), "best"),
    ("plateau-num_bad_epochs-negative", "ReduceLROnPlateau-min-rel", _set(("num_bad_epochs",), -1), "num_bad_epochs"),
    ("plateau-cooldown_counter-float", "ReduceLROnPlateau-min-rel", _set(("cooldown_counter",), 1.0), "cooldown_counter"),
    ("plateau-mode", "ReduceLROnPlateau-min-rel", _set(("mode",), "avg"), "mode"),
    ("plateau-factor-1", "ReduceLROnPlateau-min-rel", _set(("factor",), 1.0), "factor"),
    ("plateau-threshold_mode", "ReduceLROnPlateau-min-rel", _set(("threshold_mode",), "relative"), "threshold_mode"),
    ("plateau-missing-best", "ReduceLROnPlateau-min-rel", _pop(("best",)), "best"),
    ("plateau-from-closed-form", "ReduceLROnPlateau-min-rel", _donor_schedule("ExponentialLR"), "lacks|unknown|ExponentialLR"),
    ("closed-form-from-plateau", "ExponentialLR", _donor_schedule("ReduceLROnPlateau-min-rel"), "lacks|unknown|ReduceLROnPlateau"),
    ("plateau-two-lrs-for-one-group", "ReduceLROnPlateau-max-abs", _set(("lrs",), [0.05, 0.05]), "lrs"),
    ("sequential-schedulers-missing", "SequentialLR-warmup-cosine", _pop(("schedulers",)), "schedulers"),
    ("sequential-one-scheduler-dropped", "SequentialLR-warmup-cosine", _pop(("schedulers", 1)), "schedulers"),
    ("sequential-schedulers-swapped", "SequentialLR-warmup-cosine", _swap_children, r"\['schedulers'\]\[0\]"),
    ("sequential-last-child-bad", "SequentialLR-warmup-cosine", _set(("schedulers", 1, "total_steps"), 0),
     r"\['schedulers'\]\[1\].*total_steps"),
    ("sequential-child-unknown-key", "SequentialLR-warmup-cosine", _set(("schedulers", 0, "gamma"), 0.5),
     r"\['schedulers'\]\[0\]"),
    ("sequential-milestones-count", "SequentialLR-warmup-cosine", _set(("milestones",), [4, 6]), "milestones"),
    ("sequential-outer-bad-children-good", "SequentialLR-warmup-cosine", _set(("last_epoch",), -3), "last_epoch"),
    ("sequential-middle-child-bad", "SequentialLR-three", _set(("schedulers", 1, "gamma"), -0.5),
     r"\['schedulers'\]\[1\].*gamma"),
    ("sequential-from-chained", "SequentialLR-three", _donor_schedule("ChainedScheduler"), "milestones"),
    ("chained-last-child-bad", "ChainedScheduler", _set(("schedulers", 2, "start_factor"), 2.0),
     r"\['schedulers'\]\[2\].*start_factor"),
    ("chained-child-overflows", "ChainedScheduler",
     lambda sd: {**sd, "last_epoch": 10**4, "schedulers": [{**sd["schedulers"][0], "gamma": 1e10}] + sd["schedulers"][1:]},
     "."),
]  # fmt: skip


@pytest.mark.parametrize("what, name, edit, match", SCHEDULE_MISMATCHES, ids=[m[0] for m in SCHEDULE_MISMATCHES])
def test_mismatched_schedule_state_refused(what: str, name: str, edit: Callable[[Any], Any], match: str) -> None:
    """A schedule state dict that does not fit the schedule (as loaded from a JSON/pickle checkpoint)
    raises ValueError naming what is wrong, and the schedule, the lrs in the optimizer's groups (and
    the inner schedulers of a composite) stay as they were."""
    bad = edit(json.loads(json.dumps(_trained_run(name, 5).sched.state_dict())))
    run = _trained_run(name)
    before = _run_snap(run)
    children = [c.state_dict() for c in getattr(run.sched, "schedulers", [])]
    # a state whose lr overflows a double raises OverflowError (tests/test_schedules.py allows it too)
    with pytest.raises((ValueError, OverflowError) if "overflow" in what else ValueError, match=match):
        run.sched.load_state_dict(bad)
    assert [c.state_dict() for c in getattr(run.sched, "schedulers", [])] == children
    _assert_run_untouched_and_usable(run, before)


def _donor_ema(name: str, dtype: Any = np.float32) -> Callable[[Any], Any]:
    return lambda sd: _trained_run(name, 5, dtype).ema.state_dict()


EMA_MISMATCHES: List[Tuple[str, Callable[[Any], Any], str]] = [
    # (id, edit of a donor's EMA state dict, message); the runs are "WarmupCosine" (4 float32 params)
    ("not-a-mapping", lambda sd: list(sd.items()), "mapping"),
    ("averages-missing", _pop(("averages",)), "averages"),
    ("step-missing", _pop(("step",)), "step"),
    ("decay-missing", _pop(("decay",)), "decay"),
    ("decay-1", _set(("decay",), 1.0), "decay"),
    ("decay-negative", _set(("decay",), -0.1), "decay"),
    ("decay-nan", _set(("decay",), float("nan")), "decay"),
    ("decay-string", _set(("decay",), "0.9"), "decay"),
    ("bias_correction-string", _set(("bias_correction",), "true"), "bias_correction"),
    ("bias_correction-int", _set(("bias_correction",), 1), "bias_correction"),
    ("step-negative", _set(("step",), -1), "step"),
    ("step-float", _set(("step",), 5.0), "step"),
    ("step-bool", _set(("step",), True), "step"),
    ("step-string", _set(("step",), "5"), "step"),
    ("averages-one-too-few", lambda sd: {**sd, "averages": sd["averages"][:-1]}, "averages"),
    ("averages-one-too-many", lambda sd: {**sd, "averages": [*sd["averages"], np.zeros(3, np.float32)]}, "averages"),
    ("average-wrong-shape", _set(("averages", 0), np.zeros((5, 37), np.float32)), r"averages\[0\]"),
    ("average-wrong-dtype", lambda sd: _set(("averages", 1), sd["averages"][1].astype(np.float64))(sd), r"averages\[1\]"),
    ("average-byte-swapped", lambda sd: _set(("averages", 1), sd["averages"][1].astype(">f4"))(sd), r"averages\[1\]"),
    ("average-not-an-array", lambda sd: _set(("averages", 1), sd["averages"][1].tolist())(sd), r"averages\[1\]"),
    ("last-average-wrong-shape", _set(("averages", 3), np.zeros((0, 3), np.float32)), r"averages\[3\]"),
    ("from-float64-run", _donor_ema("WarmupCosine", np.float64), r"averages\[0\]"),
    ("from-arena-ema", _donor_ema("MultiStepLR"), "averages"),
    ("unknown-key", _set(("num_updates",), 5), "num_updates|unknown"),
]  # fmt: skip


@pytest.mark.parametrize("edit, match", [m[1:] for m in EMA_MISMATCHES], ids=[m[0] for m in EMA_MISMATCHES])
def test_mismatched_ema_state_refused(edit: Callable[[Any], Any], match: str) -> None:
    """An EMA state dict that does not fit raises (ValueError, or TypeError for a wrong type) naming
    the entry, and the EMA (averages, step, decay, read-out) stays as it was and keeps averaging
    like an untouched twin."""
    donor = _trained_run("WarmupCosine", 5).ema.state_dict()
    bad = edit(donor)
    run = _trained_run("WarmupCosine")
    before = _run_snap(run)
    with pytest.raises((ValueError, TypeError), match=match):
        run.ema.load_state_dict(bad)
    _assert_run_untouched_and_usable(run, before)
