import hashlib
import json

import equinox as eqx
import jax
import numpy as np
import pytest

from eqmlip import InputError
from eqmlip.data import Budget, make_batch, structure_graph
from eqmlip.io import FORMAT_VERSION, load_model, model_from_bytes, read_header, save_model
from eqmlip.models.nequip import Nequip
from eqmlip.potential import predict

from .helpers import CUTOFF


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.eqx"
    save_model(path, model, metadata={"note": "tiny", "epochs": 2})
    return path


def test_round_trip_gives_identical_predictions(alloy_structures, model, saved):
    loaded = load_model(saved)
    assert isinstance(loaded, Nequip)
    assert loaded.config == model.config and loaded.species == model.species
    assert (loaded.cutoff, loaded.avg_num_neighbors, loaded.energy_scale) == (
        model.cutoff,
        model.avg_num_neighbors,
        model.energy_scale,
    )
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(loaded), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    structures = alloy_structures[:2]
    batch = make_batch(
        structures, [structure_graph(s, CUTOFF) for s in structures], Budget(17, 300, 3)
    )
    graph = jax.tree.map(
        lambda x: x.astype(np.float32) if x.dtype == np.float64 else x, batch.graph
    )
    p, q = (eqx.filter_jit(predict)(m, graph) for m in (model, loaded))
    assert p.forces is not None and q.forces is not None
    assert np.array_equal(p.energy, q.energy) and np.array_equal(p.forces, q.forces)
    header = read_header(saved)
    assert header["format_version"] == FORMAT_VERSION
    assert header["species"] == list(model.species)
    assert header["metadata"] == {"note": "tiny", "epochs": 2}
    assert header["hyperparameters"]["config"]["target_irreps"] == model.config.target_irreps
    e0 = header["hyperparameters"]["atomic_energies"][0]
    assert [e0[str(z)] for z in model.species] == pytest.approx(
        np.asarray(model.atomic_energies[0])
    )


def _rewrite_header(data: bytes, **changes) -> bytes:
    line, payload = data.split(b"\n", 1)
    header = json.loads(line)
    header.update(changes)  # keys keep their order: sha256 stays last
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + payload


def test_newer_format_version_is_refused(saved, tmp_path):
    path = tmp_path / "newer.eqx"
    path.write_bytes(_rewrite_header(saved.read_bytes(), format_version=FORMAT_VERSION + 1))
    message = f"format version {FORMAT_VERSION + 1}.*up to {FORMAT_VERSION}"
    with pytest.raises(ValueError, match=message):
        load_model(path)
    with pytest.raises(ValueError, match=message):
        read_header(path)


def test_corrupted_files_are_refused(saved, tmp_path):
    data = saved.read_bytes()
    truncated = tmp_path / "truncated.eqx"
    truncated.write_bytes(data[:-100])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load_model(truncated)
    flipped = bytearray(data)
    flipped[-50] ^= 0xFF
    corrupted = tmp_path / "corrupted.eqx"
    corrupted.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="corrupted: the SHA-256"):
        load_model(corrupted)
    # An edited header (here the cutoff, which would load and predict garbage) is refused too.
    hyperparameters = json.loads(data.split(b"\n", 1)[0])["hyperparameters"]
    edited = tmp_path / "edited.eqx"
    edited.write_bytes(_rewrite_header(data, hyperparameters={**hyperparameters, "cutoff": 5.0}))
    with pytest.raises(ValueError, match="corrupted: the SHA-256"):
        load_model(edited)
    other = tmp_path / "other.eqx"
    other.write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match="not an eqmlip model file"):
        load_model(other)
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_model(tmp_path / "bad.eqx", load_model(saved), metadata={"x": object()})


def test_every_changed_byte_is_refused(saved):
    """Each byte of the header changed in turn, and 300 random bytes of the parameters: every
    change is refused, whatever it breaks (JSON, a field, a digit, the digest, a weight)."""
    data = saved.read_bytes()
    header_end = data.index(b"\n") + 1
    rng = np.random.default_rng(0)
    positions = [*range(header_end), *rng.choice(np.arange(header_end, len(data)), 300, False)]
    assert header_end > 500  # the sweep covers a real header
    accepted = []
    for position in positions:
        for mask in (0x01, 0x20):  # a digit or letter changed; a case or a space flipped
            changed = bytearray(data)
            changed[position] ^= mask
            try:
                model_from_bytes(bytes(changed), source="changed")
            except InputError:
                continue
            accepted.append((position, mask))
    assert accepted == []


def test_format_1_files_still_load(saved, tmp_path, model):
    """Files written before the model-agnostic header (NequIP only, parameters checksummed)."""
    data = saved.read_bytes()
    line, payload = data.split(b"\n", 1)
    header = json.loads(line)
    hp = header["hyperparameters"]
    v1 = {
        "format": "eqmlip-model",
        "format_version": 1,
        "model": "Nequip",
        **{k: hp[k] for k in ("config", "species", "cutoff", "avg_num_neighbors")},
        **{k: hp[k] for k in ("total_charges", "long_range_cutoff", "energy_scale")},
        "energy_shift": hp["energy_shift"],
        "atomic_energies": [[row[str(z)] for z in hp["species"]] for row in hp["atomic_energies"]],
        "dtype": header["dtype"],
        "metadata": {},
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    path = tmp_path / "v1.eqx"
    path.write_bytes(json.dumps(v1).encode() + b"\n" + payload)
    loaded = load_model(path)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_format_2_files_still_load(saved, tmp_path, model):
    """Format 2: the digest over the re-serialised header (sorted keys), then the parameters."""
    line, payload = saved.read_bytes().split(b"\n", 1)
    header = {k: v for k, v in json.loads(line).items() if k != "sha256"}
    header["format_version"] = 2
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    header["sha256"] = hashlib.sha256(canonical + b"\n" + payload).hexdigest()
    path = tmp_path / "v2.eqx"
    path.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    loaded = load_model(path)
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(model), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    header["cutoff"] = 5.0  # an edit is refused in format 2 as well
    path.write_bytes(json.dumps(header).encode() + b"\n" + payload)
    with pytest.raises(ValueError, match="corrupted: the SHA-256"):
        load_model(path)
