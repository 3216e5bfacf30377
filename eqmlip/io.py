"""Model files for any registered potential: a one-line JSON header, then the parameters as
`eqx.tree_serialise_leaves` bytes.

```
{"format": "eqmlip-model", "format_version": 3, "eqmlip_version": ..., "model": "nequip",
 "hyperparameters": {...}, "species": [...], "cutoff": ..., "dtype": "float32",
 "metadata": {...}, "payload_bytes": ..., "sha256": ...}\n
<eqx.tree_serialise_leaves bytes>
```

`model` is the registry name of the potential's class ([`eqmlip.models.register_potential`][]),
`hyperparameters` what its `hyperparameters()` returns; loading rebuilds the skeleton with
`from_hyperparameters` and deserialises the leaves into it (Equinox's pattern for serialising
a model with its hyperparameters). `sha256`, the header's last field, is the SHA-256 of the
file's exact bytes without that field: the header line up to it (closed by `}`), a newline,
then the parameters. So every changed byte is refused, even one that leaves a value the same
after parsing (a 17th digit), and an edited header as surely as corrupted parameters. No
pickle: the header is JSON, the payload raw array bytes. Files of format version 2 (the digest
over the header re-serialised) and 1 (NequIP only, parameters checksummed) are still read.
"""

import hashlib
import io
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import equinox as eqx
import jax
import jax.random as jr
import numpy as np

from ._errors import InputError
from .models._potential import (
    AbstractPotential,
    parameter_dtype,
    potential_class,
    potential_name,
)

FORMAT = "eqmlip-model"
FORMAT_VERSION = 3
# A header line longer than this is not an eqmlip header (guards against reading a huge binary).
_MAX_HEADER_BYTES = 16 * 1024 * 1024


def _version() -> str:
    from . import __version__

    return __version__


def model_header(
    model: AbstractPotential, *, metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON header [`eqmlip.io.save_model`][] writes for `model` (without the integrity
    fields `payload_bytes` and `sha256`).

    **Arguments:**

    - `model`: a registered [`eqmlip.models.AbstractPotential`][].
    - `metadata`: JSON-serialisable user data stored under `"metadata"`.

    **Returns:** a dict of JSON values.
    """
    if not isinstance(model, AbstractPotential):
        raise TypeError(
            f"save_model: expected an eqmlip.models.AbstractPotential, got {type(model).__name__}."
        )
    name = potential_name(model)
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "eqmlip_version": _version(),
        "model": name,
        "hyperparameters": model.hyperparameters(),
        "species": [int(z) for z in model.species],
        "cutoff": float(model.cutoff),
        "dtype": str(parameter_dtype(model)),
        "metadata": dict(metadata) if metadata is not None else {},
    }
    for field in ("hyperparameters", "metadata"):
        try:
            json.dumps(header[field], allow_nan=False)
        except (TypeError, ValueError) as error:
            what = f"{name}.hyperparameters()" if field == "hyperparameters" else "the metadata"
            raise TypeError(
                f"save_model: {what} must be JSON-serialisable (finite numbers, strings, lists, "
                f"dicts), got {header[field]!r}: {error}"
            ) from error
    return header


# How a format-3 header line ends: its digest, as the last field.
_DIGEST_FIELD = re.compile(rb',"sha256":"([0-9a-f]{64})"\}\Z')


def _file_digest(header_without_digest: bytes, payload: bytes) -> str:
    """Format 3: the SHA-256 of the file's bytes as written, the digest field left out."""
    return hashlib.sha256(header_without_digest + b"\n" + payload).hexdigest()


def _digest(header: Mapping[str, Any], payload: bytes) -> str:
    """Format 2: SHA-256 of the canonical JSON of the header without its `sha256` field, then
    the parameters."""
    fields = {k: v for k, v in header.items() if k != "sha256"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canonical + b"\n" + payload).hexdigest()


def model_to_bytes(model: AbstractPotential, *, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The bytes of a model file (see [`eqmlip.io.save_model`][])."""
    header = model_header(model, metadata=metadata)
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, model)
    payload = buffer.getvalue()
    header["payload_bytes"] = len(payload)
    body = json.dumps(header, allow_nan=False, separators=(",", ":")).encode()
    digest = _file_digest(body, payload)
    return body[:-1] + b',"sha256":"' + digest.encode() + b'"}\n' + payload


def save_model(
    path: "str | os.PathLike[str]",
    model: AbstractPotential,
    *,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write a model file: a JSON header line, then the parameters.

    The header records the format version, the eqmlip version, the potential's registry name
    and hyperparameters, its species, cutoff and dtype, `metadata`, the payload's size and the
    SHA-256 of the whole file. The payload is `eqx.tree_serialise_leaves(model)`.

    **Arguments:**

    - `path`: the file to write (overwritten; written to a temporary file first, then renamed,
        so an interrupted save never leaves a half-written model).
    - `model`: a registered [`eqmlip.models.AbstractPotential`][].
    - `metadata`: JSON-serialisable user data (e.g. training metrics), read back by
        [`eqmlip.io.read_header`][].
    """
    data = model_to_bytes(model, metadata=metadata)
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _split(data: bytes, source: str) -> tuple[dict[str, Any], bytes, bytes]:
    """`(header, payload, header line)` of a model file's bytes."""
    newline = data.find(b"\n", 0, _MAX_HEADER_BYTES)
    if newline < 0:
        raise InputError(
            f"load_model: {source} is not an eqmlip model file (no JSON header line found)."
        )
    try:
        header = json.loads(data[:newline].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(
            f"load_model: {source} is not an eqmlip model file or its header is corrupted "
            f"({error})."
        ) from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        got = (
            f"format {header.get('format')!r}"
            if isinstance(header, dict)
            else "its first line is not a JSON header"
        )
        raise InputError(
            f"load_model: {source} is not an eqmlip model file ({got}; expected format {FORMAT!r})."
        )
    version = header.get("format_version")
    if not isinstance(version, int):
        raise InputError(f"load_model: {source} has no integer format_version (got {version!r}).")
    if version > FORMAT_VERSION:
        raise InputError(
            f"load_model: {source} was written with model-file format version {version} (eqmlip "
            f"{header.get('eqmlip_version', '?')}), but this eqmlip ({_version()}) reads format "
            f"versions up to {FORMAT_VERSION}. Upgrade eqmlip to load it."
        )
    return header, data[newline + 1 :], data[:newline]


def read_header(path: "str | os.PathLike[str]") -> dict[str, Any]:
    """The JSON header of a model file (config, species, E0s, metadata, ...), without building
    the model. Raises a `ValueError` for a file that is not an eqmlip model or was written by a
    newer format version."""
    with open(os.fspath(path), "rb") as f:
        head = f.read(_MAX_HEADER_BYTES)
    header, _, _ = _split(head, repr(os.fspath(path)))
    return header


def _v1_hyperparameters(header: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of a format-1 (NequIP-only) header."""
    species = [int(z) for z in header["species"]]
    keys = ("cutoff", "avg_num_neighbors", "total_charges", "long_range_cutoff")
    return {
        "config": header["config"],
        "species": species,
        **{k: header[k] for k in keys},
        "atomic_energies": [
            {str(z): e for z, e in zip(species, row, strict=True)}
            for row in header["atomic_energies"]
        ],
        "energy_scale": header["energy_scale"],
        "energy_shift": header["energy_shift"],
    }


def model_from_header(
    header: Mapping[str, Any], *, source: str = "the header"
) -> AbstractPotential:
    """A model with the architecture the header describes and placeholder parameters (the
    skeleton that the payload is deserialised into)."""
    try:
        if header["format_version"] == 1:
            name, hyperparameters = "nequip", _v1_hyperparameters(header)
        else:
            name, hyperparameters = header["model"], header["hyperparameters"]
        dtype = np.dtype(header["dtype"])
    except (KeyError, TypeError) as error:
        raise InputError(
            f"load_model: {source} has no valid {error} field in its header."
        ) from error
    if dtype == np.float64 and not jax.config.read("jax_enable_x64"):
        raise InputError(
            "load_model: the model file holds float64 parameters but jax_enable_x64 is off; "
            "enable it (jax.config.update('jax_enable_x64', True)) before loading."
        )
    try:
        cls = potential_class(name)
    except ValueError as error:
        raise InputError(f"load_model: {source}: {error}") from None
    if not isinstance(hyperparameters, Mapping):
        raise InputError(
            f"load_model: {source} has hyperparameters {hyperparameters!r}, expected a mapping."
        )
    try:
        return cls.from_hyperparameters(hyperparameters, dtype=dtype, key=jr.key(0))
    except (TypeError, ValueError) as error:
        raise InputError(
            f"load_model: {source} describes a {name!r} model that cannot be built: {error}"
        ) from error


def _check_integrity(header: Mapping[str, Any], payload: bytes, line: bytes, source: str) -> None:
    expected = header.get("payload_bytes")
    if len(payload) != expected:
        raise InputError(
            f"load_model: {source} is truncated or corrupted: its parameters have {len(payload)} "
            f"bytes, the header says {expected}."
        )
    version = header["format_version"]
    if version == 1:  # only the parameters were checksummed
        digest, recorded = hashlib.sha256(payload).hexdigest(), header.get("payload_sha256")
    elif version == 2:
        digest, recorded = _digest(header, payload), header.get("sha256")
    else:
        field = _DIGEST_FIELD.search(line)
        if field is None:
            raise InputError(
                f"load_model: {source} is corrupted: its header does not end with its sha256 field."
            )
        digest = _file_digest(line[: field.start()] + b"}", payload)
        recorded = field.group(1).decode()
    if digest != recorded:
        raise InputError(
            f"load_model: {source} is corrupted: the SHA-256 of its header and parameters is "
            f"{digest}, the file says {recorded} (a changed byte anywhere, header included, is "
            "refused)."
        )


def model_from_bytes(data: bytes, *, source: str = "the data") -> AbstractPotential:
    """Load a model from the bytes of a model file (see [`eqmlip.io.load_model`][])."""
    header, payload, line = _split(data, source)
    _check_integrity(header, payload, line, source)
    skeleton = model_from_header(header, source=source)
    try:
        return eqx.tree_deserialise_leaves(io.BytesIO(payload), skeleton)
    except Exception as error:  # equinox/numpy raise various errors on mismatched leaves
        raise InputError(
            f"load_model: the parameters in {source} do not match the architecture in its "
            f"header ({type(error).__name__}: {error})."
        ) from error


def load_model(path: "str | os.PathLike[str]") -> AbstractPotential:
    """Read a model file written by [`eqmlip.io.save_model`][].

    The potential's class is looked up in the registry by the header's name, its skeleton
    rebuilt from the header's hyperparameters, then the parameters are deserialised into it.
    A file of your own potential loads once its class is registered (import the module that
    registers it first).

    **Arguments:**

    - `path`: the model file.

    **Returns:** the model, parameters as saved.

    **Raises:** [`eqmlip.InputError`][] (a `ValueError`) when the path is not a file, when the
    file is not an eqmlip model, was written by a newer
    format version (the message names both versions), is truncated, corrupted or edited (size
    or SHA-256 mismatch over header and parameters), names an unregistered potential, or holds
    float64 parameters while `jax_enable_x64` is off.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "does not exist"
        raise InputError(f"load_model: {path!r} {problem}; expected a model file (.eqx).")
    with open(path, "rb") as f:
        data = f.read()
    return model_from_bytes(data, source=repr(path))
