"""Checkpoints: safetensors weights + JSON metadata, written atomically, never pickle.

`checkpoints/<step>.safetensors` holds every tensor: the policy (`policy/<name>`), the optimizer
state (`optim/<param index>/<name>`) and the env / rollout carry-over arrays (`env/...`,
`rollout/...`). `checkpoints/<step>.json` holds the rest: counters, the config, the RNG states
(torch, numpy, python `random`, the envs' `np_random`), the optimizer's param groups, and the
SHA-256 of the weights file. `checkpoints/latest.json` points at the newest pair.

A truncated, corrupted or mismatched checkpoint raises `CheckpointError` naming the file and the
mismatch.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from agents.run.files import atomic_file, file_sha256, sha256_of
from agents.run.jsonio import read_json

FORMAT_VERSION = 3  # 3: optimizer state keys recorded; rollout carry-over 'skip'


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, corrupted or mismatched."""


# ----------------------------------------------------------------------------- atomic files


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    """save_file to a temp name, fsync, os.replace (`atomic_file`: the umask's mode, no temp file
    left behind by any exception, Ctrl-C included); returns the file's SHA-256."""
    try:
        with atomic_file(path) as tmp:
            save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(tmp))
            digest = sha256_of(tmp)
    except (OSError, SafetensorError) as err:
        raise OSError(getattr(err, "errno", None), _reason(err), str(path)) from err
    return digest


def atomic_save_json(data: dict[str, Any], path: Path) -> None:
    """JSON to a temp name, fsync, os.replace (`atomic_file`)."""
    try:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n")
    except OSError as err:
        raise OSError(err.errno, _reason(err), str(path)) from err


def _reason(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err)


def require(meta: dict[str, Any], keys: list[str], path: Path) -> None:
    """CheckpointError naming the metadata keys missing from `path`."""
    missing = [k for k in keys if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: metadata keys {missing} missing")


# ----------------------------------------------------------------------------- pinned folders

# what a model folder's behaviour depends on, besides its *.safetensors weights (not READMEs,
# training summaries or generation defaults, which may be rewritten without changing the model)
PINNED_FILES = (
    "config.json", "adapter_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
)  # fmt: skip


def folder_fingerprint(folder: Path) -> dict[str, str]:
    """{file name: SHA-256} of a model folder's configs, tokenizer files (`PINNED_FILES`) and
    *.safetensors weights; each file is read once per process (`file_sha256`)."""
    folder = Path(folder)
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.name in PINNED_FILES or p.suffix == ".safetensors")
    )
    return {name: file_sha256(folder / name) for name in names}


def pin_folders(folders: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """The checkpoint record of the model folders it reads but does not hold (a LoRA run's
    base): {config key: {"path", "sha256": folder_fingerprint}}."""
    return {
        key: {"path": str(folder), "sha256": folder_fingerprint(folder)}
        for key, folder in folders.items()
    }


def check_pinned_folders(
    saved: dict[str, Any] | None, folders: dict[str, Path], path: Path
) -> bool:
    """Refuse (CheckpointError naming the folder and each changed file) a checkpoint whose pinned
    model folders (`pin_folders`, under metadata key "pinned_folders") differ from the folders
    `folders` the config would load now: its LoRA adapters were trained on the old base, and
    combined with another one they are silently another model. Returns False, checking
    nothing, for a checkpoint written before folders were pinned (`saved` None)."""
    if saved is None:
        return False
    for key, record in saved.items() if isinstance(saved, dict) else [(None, None)]:
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), dict):
            raise CheckpointError(
                f"checkpoint metadata {path} is corrupted: pinned_folders = {saved!r:.200}"
            )
        folder = Path(folders.get(key, record.get("path", "")))
        recorded = record["sha256"]
        now = folder_fingerprint(folder) if folder.is_dir() else {}
        changes = [
            f"{name} is missing now" if name not in now
            else f"{name} is new" if name not in recorded
            else f"{name} has SHA-256 {now[name][:12]}... now, {recorded[name][:12]}... then"
            for name in sorted(set(recorded) | set(now))
            if now.get(name) != recorded.get(name)
        ]  # fmt: skip
        if changes:
            what = "; ".join(changes) if now else "the folder is missing or empty now"
            raise CheckpointError(
                f"checkpoint {path} was trained on the model folder {folder} ({key}), which has "
                f"changed since: {what}. The checkpoint holds only what was trained on top of "
                "that folder (LoRA adapters), so resuming, evaluating or exporting it with the "
                "changed folder would give another model. Restore the folder's files, or start a "
                "new run from the new model"
            )
    return True


# ----------------------------------------------------------------------------- RNG and env state


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the global RNG states of torch, numpy and python."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    py_state = random.getstate()
    meta = {
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    return meta, {"rng/torch": torch.get_rng_state()}


def set_rng_state(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    if "rng/torch" not in tensors or not {"numpy", "python"} <= set(meta):
        raise CheckpointError("the checkpoint's RNG state (rng/torch, numpy, python) is incomplete")
    torch.set_rng_state(tensors["rng/torch"])
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


SCALARS = (bool, int, float, type(None))
_NOT_SAVED = object()


def _json_attr(value: Any) -> Any:
    """JSON form of an env attribute that is a scalar (Python or numpy), a list / tuple of them
    (nested; e.g. Blackjack's hands) or a numpy array of a dtype torch cannot hold (bytes or
    str, e.g. FrozenLake's map); `_NOT_SAVED` for anything else. Inverse: `_from_json_attr`."""
    if isinstance(value, SCALARS):
        return value
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return {"numpy": value.dtype.str, "value": value.item()}
    if isinstance(value, (list, tuple)):
        items = [_json_attr(v) for v in value]
        if any(item is _NOT_SAVED for item in items):
            return _NOT_SAVED
        return items if isinstance(value, list) else {"tuple": items}
    if isinstance(value, np.ndarray) and value.dtype.kind in "SU":
        return {
            "ndarray": value.dtype.str,
            "shape": list(value.shape),
            "hex": value.tobytes().hex(),
        }
    return _NOT_SAVED


def _from_json_attr(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json_attr(v) for v in value]
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_from_json_attr(v) for v in value["tuple"])
    if isinstance(value, dict) and "numpy" in value:
        return np.dtype(value["numpy"]).type(value["value"])
    if isinstance(value, dict) and "ndarray" in value:
        data = np.frombuffer(bytes.fromhex(value["hex"]), dtype=value["ndarray"])
        return data.reshape(value["shape"]).copy()
    return value


def _env_objects(env: Any) -> dict[str, Any] | None:
    """The objects that hold an env's mutable state: the vector env itself and, for a sync
    vector env, every sub-env with its wrapper chain. None for envs whose state lives in other
    processes (AsyncVectorEnv)."""
    if isinstance(env.unwrapped, __import__("gymnasium").vector.AsyncVectorEnv):
        return None
    objects = {"vec": env.unwrapped}
    for i, sub in enumerate(getattr(env.unwrapped, "envs", []) or []):
        depth, node = 0, sub
        while node is not None:
            objects[f"env{i}.{depth}"] = node
            node, depth = getattr(node, "env", None), depth + 1
    return objects


def env_state(env: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    """Generic snapshot of an env's state: every numeric numpy-array attribute (tensors), every
    scalar or list / tuple of scalars attribute and the `np_random` generator state (JSON).
    Enough for classic-control and toy-text envs and native vector envs whose state is numpy
    arrays, e.g. CartPoleVectorEnv."""
    objects = _env_objects(env)
    if objects is None:
        return None
    meta: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, obj in objects.items():
        scalars, generators = {}, {}
        for attr, value in vars(obj).items():
            if isinstance(value, np.ndarray) and value.dtype.kind in "biufc":
                tensors[f"env/{name}/{attr}"] = torch.from_numpy(np.ascontiguousarray(value))
            elif isinstance(value, np.random.Generator):
                generators[attr] = value.bit_generator.state
            elif (saved := _json_attr(value)) is not _NOT_SAVED:
                scalars[attr] = saved
        meta[name] = {"scalars": scalars, "generators": generators}
    return meta, tensors


def set_env_state(env: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    objects = _env_objects(env) or {}
    for name, saved in meta.items():
        if name not in objects:
            raise CheckpointError(f"the env has no component {name!r} saved in the checkpoint")
        obj = objects[name]
        for attr, value in saved["scalars"].items():
            setattr(obj, attr, _from_json_attr(value))
        for attr, state in saved["generators"].items():
            bit_generator = getattr(np.random, state["bit_generator"])()
            bit_generator.state = state
            setattr(obj, attr, np.random.Generator(bit_generator))
    for key, tensor in tensors.items():
        _, name, attr = key.split("/", 2)
        setattr(objects[name], attr, tensor.numpy().copy())


# ----------------------------------------------------------------------------- optimizer


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flatten `optimizer.state_dict()`: tensors -> `optim/<idx>/<name>`, the rest -> JSON."""
    sd = optimizer.state_dict()
    tensors, scalars, keys = {}, {}, {}
    for idx, state in sd["state"].items():
        keys[str(idx)] = sorted(state)
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{name}"] = value
            else:
                scalars[f"{idx}/{name}"] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars, "state_keys": keys}
    return meta, tensors


def load_optimizer(
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    path: Path,
) -> None:
    """Restore the optimizer; CheckpointError naming every state entry the file lacks (a fresh
    Adam would silently change the run)."""
    require(meta, ["param_groups", "scalars", "state_keys"], path)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    missing = [
        f"optim/{idx}/{name}"
        for idx, names in meta["state_keys"].items()
        for name in names
        if name not in state.get(int(idx), {})
    ]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: optimizer state {missing[:6]} missing "
            f"({len(missing)} entries); resuming would restart Adam from scratch"
        )
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# ----------------------------------------------------------------------------- save / load


def policy_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy tensors a checkpoint holds: `policy.checkpoint_state_dict()` (its state_dict,
    or for a LoRA policy the adapters and value head, not the frozen base)."""
    return policy.checkpoint_state_dict()


def save_checkpoint(
    folder: Path,
    step: int,
    policy: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `<step>.safetensors` then `<step>.json` then `latest.json`, each atomically.
    Returns the JSON path. A crash at any point leaves the previous checkpoint usable."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    own = policy_state(policy)
    tensors = {f"policy/{k}": v for k, v in own.items()}
    meta = dict(meta)
    if optimizer is not None:
        optim_meta, optim_tensors = optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
        meta["optimizer"] = optim_meta
    rng_meta, rng_tensors = rng_state()
    tensors.update(rng_tensors)
    tensors.update(extra_tensors or {})
    meta["rng"] = rng_meta
    weights = folder / f"{step}.safetensors"
    meta.update(
        format_version=FORMAT_VERSION,
        step=step,
        weights_file=weights.name,
        weights_sha256=atomic_save_tensors(tensors, weights),
        policy_shapes={k: list(v.shape) for k, v in own.items()},
    )
    path = folder / f"{step}.json"
    try:
        atomic_save_json(meta, path)
    except BaseException:
        weights.unlink(missing_ok=True)  # no metadata names it: half a checkpoint
        raise
    atomic_save_json({"checkpoint": path.name, "step": step}, folder / "latest.json")
    return path


def latest_checkpoint(folder: Path) -> Path:
    """The JSON path named by `latest.json` in a checkpoints folder."""
    pointer = Path(folder) / "latest.json"
    if not pointer.is_file():
        raise CheckpointError(f"no checkpoint in {pointer.parent}: {pointer.name} does not exist")
    try:
        data = read_json(pointer)
    except ValueError as err:
        raise CheckpointError(f"checkpoint pointer {pointer} is corrupted: {err}") from None
    name = data.get("checkpoint") if isinstance(data, dict) else None
    # the pointer names a file of its own folder (as save_checkpoint writes it), never a path
    # into another run
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".json"):
        raise CheckpointError(
            f"checkpoint pointer {pointer} is corrupted: 'checkpoint' = {name!r} must be the name "
            "of a '<step>.json' file in that folder"
        )
    return pointer.parent / name


def read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load and verify a checkpoint: (metadata, tensors). Accepts the .json or .safetensors
    path. Raises CheckpointError naming the file on any problem."""
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"checkpoint metadata {path} does not exist")
    try:
        meta = read_json(path)
    except ValueError as err:
        raise CheckpointError(
            f"checkpoint metadata {path} is truncated or corrupted: {err}"
        ) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {path} is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version {meta.get('format_version')!r}, expected "
            f"{FORMAT_VERSION}"
        )
    require(meta, ["weights_file", "weights_sha256"], path)
    for key in ("weights_file", "weights_sha256"):
        if not isinstance(meta[key], str):
            raise CheckpointError(
                f"checkpoint metadata {path} is corrupted: {key} = {meta[key]!r} must be a string"
            )
    weights = path.parent / Path(meta["weights_file"]).name
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights {weights} (named by {path}) do not exist")
    digest = sha256_of(weights)
    if digest != meta["weights_sha256"]:
        raise CheckpointError(
            f"checkpoint weights {weights} are truncated or corrupted: SHA-256 {digest[:12]}... "
            f"does not match {meta['weights_sha256'][:12]}... recorded in {path.name}"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint weights {weights} cannot be read: {err}") from None
    return meta, tensors


def load_policy_weights(
    policy: torch.nn.Module, tensors: dict[str, torch.Tensor], file: Path
) -> None:
    """Copy `policy/*` tensors into `policy`; a missing, extra or mis-shaped tensor is an error
    naming the file and the key."""
    saved = {k[len("policy/") :]: v for k, v in tensors.items() if k.startswith("policy/")}
    own = policy_state(policy)
    missing = sorted(set(own) - set(saved))
    extra = sorted(set(saved) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {file} does not match the policy: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    for key, value in own.items():
        if tuple(saved[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"checkpoint {file} does not match the policy: {key!r} has shape "
                f"{tuple(saved[key].shape)} in the file, {tuple(value.shape)} in the policy"
            )
    # a partial state (LoRA) leaves the frozen base as built
    policy.load_state_dict(saved, strict=len(own) == len(policy.state_dict()))
