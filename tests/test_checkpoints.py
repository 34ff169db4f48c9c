"""Checkpoints: save mid-training, resume in a fresh process, continue bitwise identically.

For every optimizer and flag set (and the FlatParams arena path, several param groups, and
parameters that skip steps), training runs N steps, the parameters and ``state_dict()`` are
saved both as ``.npz`` (flattened by the helpers below) and as a pickle, and a *new Python
process* rebuilds the optimizer, loads each file, and runs N more steps. The result must be
bitwise that of 2N uninterrupted steps.

A truncated or corrupted file, or a checkpoint that does not fit (another optimizer, other
shapes, other parameter/group counts, bad values), is refused with an exception, and the
optimizer is left exactly as it was (it then steps exactly like an untouched twin).
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
