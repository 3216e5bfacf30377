"""Model files: a one-line JSON header, then the parameters as `eqx.tree_serialise_leaves` bytes.

```
{"format": "eqmlip-model", "format_version": 1, "eqmlip_version": ..., "model": "Nequip",
 "config": {...NequipConfig fields...}, "species": [...], "atomic_energies": [[...]], ...}\\n
<eqx.tree_serialise_leaves bytes>
```

The header holds everything needed to rebuild the model's skeleton (its config, species, E0s,
cutoff, average neighbour count, energy scale and shift, dtype), the payload's size and SHA-256
(so a truncated or corrupted file is an error, not garbage parameters), and free-form user
metadata. No pickle: the header is JSON, the payload raw array bytes.
"""

import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

from .models.nequip import Nequip, NequipConfig

FORMAT = "eqmlip-model"
FORMAT_VERSION = 1
# A header line longer than this is not an eqmlip header (guards against reading a huge binary).
_MAX_HEADER_BYTES = 16 * 1024 * 1024


def _version() -> str:
    from . import __version__

    return __version__


def _config_dict(config: NequipConfig) -> dict[str, Any]:
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Mapping):
            value = dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[field.name] = value
    return out


def _finite_or_none(x: float) -> float | None:
    # JSON has no NaN: a dataset without an E0 for a species (NaN in the table) is written null.
    return None if math.isnan(x) else float(x)


def model_header(model: Nequip, *, metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON header [`eqmlip.io.save_model`][] writes for `model` (without the payload
    fields `payload_bytes` and `payload_sha256`).

    **Arguments:**

    - `model`: a [`eqmlip.models.nequip.Nequip`][].
    - `metadata`: JSON-serialisable user data stored under `"metadata"`.

    **Returns:** a dict of JSON values.
    """
    if not isinstance(model, Nequip):
        raise TypeError(f"save_model: expected a Nequip model, got {type(model).__name__}.")
    table = np.asarray(model.atomic_energies, dtype=np.float64)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "eqmlip_version": _version(),
        "model": "Nequip",
        "config": _config_dict(model.config),
        "species": list(model.species),
        "atomic_energies": [[_finite_or_none(x) for x in row] for row in table],
        "cutoff": model.cutoff,
        "avg_num_neighbors": model.avg_num_neighbors,
        "total_charges": None if model.total_charges is None else list(model.total_charges),
        "long_range_cutoff": model.long_range_cutoff,
        "energy_scale": model.energy_scale,
        "energy_shift": model.energy_shift,
        "dtype": str(model.atomic_energies.dtype),
        "metadata": dict(metadata) if metadata is not None else {},
    }
    try:
        json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"save_model: the metadata must be JSON-serialisable (finite numbers, strings, "
            f"lists, dicts), got {metadata!r}: {error}"
        ) from error
    return header


def model_to_bytes(model: Nequip, *, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of a model file (see [`eqmlip.io.save_model`][])."""
    header = model_header(model, metadata=metadata)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    payload = buffer.getvalue()
    header["payload_bytes"] = len(payload)
    header["payload_sha256"] = hashlib.sha256(payload).hexdigest()
    line = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    return line + b"\n" + payload


def save_model(
    path: "str | os.PathLike[str]", model: Nequip, *, metadata: Mapping[str, Any] | None = None
) -> None:
    """Write a model file: a JSON header line, then the parameters.

    The header records the format version, the eqmlip version, the `NequipConfig` fields, the
    species, the E0 table, the cutoff, the average neighbour count, the energy scale and shift,
    the dtype, the payload's size and SHA-256, and `metadata`. The payload is
    `eqx.tree_serialise_leaves(model)`.

    **Arguments:**

    - `path`: the file to write (overwritten; written to a temporary file first, then renamed,
        so an interrupted save never leaves a half-written model).
    - `model`: a [`eqmlip.models.nequip.Nequip`][].
    - `metadata`: JSON-serialisable user data (e.g. training metrics), read back by
        [`eqmlip.io.read_header`][].
    """
    data = model_to_bytes(model, metadata=metadata)
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _split(data: bytes, source: str) -> tuple[dict[str, Any], bytes]:
    newline = data.find(b"\n", 0, _MAX_HEADER_BYTES)
    if newline < 0:
        raise ValueError(
            f"load_model: {source} is not an eqmlip model file (no JSON header line found)."
        )
    try:
        header = json.loads(data[:newline].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"load_model: {source} is not an eqmlip model file or its header is corrupted "
            f"({error})."
        ) from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(
            f"load_model: {source} is not an eqmlip model file (format {got!r}, expected "
            f"{FORMAT!r})."
        )
    version = header.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"load_model: {source} has no integer format_version (got {version!r}).")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"load_model: {source} was written with model-file format version {version} (eqmlip "
            f"{header.get('eqmlip_version', '?')}), but this eqmlip ({_version()}) reads format "
            f"versions up to {FORMAT_VERSION}. Upgrade eqmlip to load it."
        )
    return header, data[newline + 1 :]


def read_header(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """The JSON header of a model file (config, species, E0s, metadata, ...), without building
    the model. Raises a `ValueError` for a file that is not an eqmlip model or was written by a
    newer format version."""
    with open(os.fspath(path), "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    header, _ = _split(head, repr(os.fspath(path)))
    return header


def model_from_header(header: Mapping[str, Any]) -> Nequip:
    """A model with the architecture the header describes and placeholder parameters (the
    skeleton that the payload is deserialised into)."""
    if header.get("model") != "Nequip":
        raise ValueError(
            f"load_model: unknown model type {header.get('model')!r}; this eqmlip knows 'Nequip'."
        )
    dtype = np.dtype(header["dtype"])
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "load_model: the model file holds float64 parameters but jax_enable_x64 is off; "
            "enable it (jax.config.update('jax_enable_x64', True)) before loading."
        )
    config = NequipConfig(**header["config"])
    species = tuple(int(z) for z in header["species"])
    table = [
        {z: (math.nan if e is None else float(e)) for z, e in zip(species, row, strict=True)}
        for row in header["atomic_energies"]
    ]
    return Nequip(
        config,
        species,
        cutoff=float(header["cutoff"]),
        avg_num_neighbors=float(header["avg_num_neighbors"]),
        atomic_energies=table,
        total_charges=header["total_charges"],
        long_range_cutoff=header["long_range_cutoff"],
        energy_scale=float(header["energy_scale"]),
        energy_shift=float(header["energy_shift"]),
        dtype=dtype,
        key=jr.key(0),
    )


def model_from_bytes(data: bytes, *, source: str = "the data") -> Nequip:
    """Load a model from the bytes of a model file (see [`eqmlip.io.load_model`][])."""
    header, payload = _split(data, source)
    expected = header.get("payload_bytes")
    if len(payload) != expected:
        raise ValueError(
            f"load_model: {source} is truncated or corrupted: its parameters have {len(payload)} "
            f"bytes, the header says {expected}."
        )
    digest = hashlib.sha256(payload).hexdigest()
    if digest != header.get("payload_sha256"):
        raise ValueError(
            f"load_model: {source} is corrupted: the SHA-256 of its parameters is {digest}, the "
            f"header says {header.get('payload_sha256')}."
        )
    skeleton = model_from_header(header)
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), skeleton)
    except Exception as error:  # equinox/numpy raise various errors on mismatched leaves
        raise ValueError(
            f"load_model: the parameters in {source} do not match the architecture in its "
            f"header ({type(error).__name__}: {error})."
        ) from error


def load_model(path: "str | os.PathLike[str]") -> Nequip:
    """Read a model file written by [`eqmlip.io.save_model`][].

    The skeleton is rebuilt from the header, then the parameters are deserialised into it.

    **Arguments:**

    - `path`: the model file.

    **Returns:** the [`eqmlip.models.nequip.Nequip`][] model, parameters as saved.

    **Raises:** `ValueError` when the file is not an eqmlip model, was written by a newer
    format version (the message names both versions), is truncated or corrupted (size or
    SHA-256 mismatch), or holds float64 parameters while `jax_enable_x64` is off.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    return model_from_bytes(data, source=repr(path))
