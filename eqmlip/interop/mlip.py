"""Load mlip 0.2.5 NequIP parameters into eqmlip modules. Reads plain nested mappings (Flax's
`FrozenDict` works too); never imports mlip or Flax.

mlip's production layer (`TRAILING_CHANNELS`) factors multiplicities into `g` channels;
eqmlip's layer does not, so two weights are permuted on the way in (the maps come from
[`eqmlip.ops.nequip.ConvPath`][]): the columns of the radial MLP's last kernel and the input
columns of every linear_out block. Leaves that only feed outputs eqmlip does not build (the last
layer's nonscalars and gates, which NequIP's readout never reads) are checked and dropped.
"""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..models.mace.blocks import EquivariantProductBasisBlock, MaceLayer, SymmetricContraction
from ..models.mace.config import MaceConfig
from ..models.mace.network import Mace
from ..models.nequip.blocks import NequipEmbeddingBlock, NequipLayer
from ..models.nequip.config import NequipConfig
from ..models.nequip.network import Nequip, _atomic_energy_table
from ..nn import E3jLinear, MultiHeadReadoutBlock
from ..ops.linear import LinearBlock, e3j_blocks
from ..ops.nequip import ConvPath, convolution_paths, split_target_irreps
from ._flax import _flatten as _flatten_flax, _show

Path = tuple[str, ...]


# --- mlip's column permutations (channels factored out as a trailing axis) ----------------------


def mlip_radial_columns(paths: Sequence[ConvPath]) -> np.ndarray:
    """For each eqmlip radial-MLP output column, the mlip (trailing-channels) column."""
    cols = []
    for p in paths:
        for c in range(p.channels):
            for u in range(p.mul_red):
                cols.append((p.mlip_k + u) * p.channels + c)
    return np.asarray(cols, dtype=np.int64)


def mlip_linear_out_columns(paths: Sequence[ConvPath], block: int) -> np.ndarray:
    """For each eqmlip linear_out input copy of message block `block`, the mlip column."""
    cols = []
    for p in paths:
        if p.block != block:
            continue
        for c in range(p.channels):
            for u in range(p.mul_red):
                cols.append(c * p.block_mul_red + p.mlip_j + u)
    return np.asarray(cols, dtype=np.int64)


def _flatten(tree: Mapping[str, Any]) -> dict[Path, Any]:
    return _flatten_flax(tree, separator="#")


class _Reader:
    """Checks a flat parameter dict against the expected leaves (paths and shapes), then hands
    out leaves as NumPy arrays."""

    def __init__(
        self,
        what: str,
        flat: Mapping[Path, Any],
        expected: Mapping[Path, tuple],
        hint: str = "Build the eqmlip model from the same NequipConfig and dataset information "
        "as the mlip model.",
    ):
        missing = sorted(set(expected) - set(flat))
        extra = sorted(set(flat) - set(expected))
        # Empty leaves only need to be empty (mlip's own zip loader re-creates their shapes).
        wrong = [
            f"  {_show(p)} has shape {tuple(np.shape(flat[p]))}, expected {expected[p]}"
            for p in sorted(set(expected) & set(flat))
            if tuple(np.shape(flat[p])) != tuple(expected[p])
            and not (np.size(flat[p]) == 0 and math.prod(expected[p]) == 0)
        ]
        if missing or extra or wrong:
            lines = [f"from_mlip: the parameters do not match {what}."]
            lines += [f"  missing: {_show(p)} {expected[p]}" for p in missing]
            lines += [f"  unexpected: {_show(p)} {tuple(np.shape(flat[p]))}" for p in extra]
            lines += wrong
            lines.append(hint)
            raise ValueError("\n".join(lines))
        self.flat = flat

    def __call__(self, path: Path) -> np.ndarray:
        return np.asarray(self.flat[path])


def _e3j_name(i: int, block: LinearBlock) -> str:
    return f"weight{i}_{block.l}_{block.p}"


def _index_of(blocks: tuple[LinearBlock, ...], block: LinearBlock) -> int:
    for i, b in enumerate(blocks):
        if (b.l, b.p) == (block.l, block.p):
            return i
    raise AssertionError((blocks, block))


def _full_layer_structure(
    layer: NequipLayer,
) -> tuple[tuple[LinearBlock, ...], tuple[LinearBlock, ...], tuple[LinearBlock, ...], int]:
    """mlip's blocks (linear_in, linear_out, residual) and radial output width for the full
    (unpruned) layer."""
    scalars, gates, nonscalars = split_target_irreps(
        layer.irreps_in, layer.l_max, layer.target_irreps
    )
    conv_irreps = (scalars + gates + nonscalars).regroup()
    paths, message_irreps = convolution_paths(layer.irreps_in, layer.l_max, conv_irreps)
    return (
        e3j_blocks(layer.irreps_in, layer.irreps_in),
        e3j_blocks(message_irreps, conv_irreps),
        e3j_blocks(layer.irreps_in, conv_irreps),
        sum(p.mul for p in paths),
    )


def _layer_expected(layer: NequipLayer) -> dict[Path, tuple]:
    lin_in, lin_out, residual, width = _full_layer_structure(layer)
    expected: dict[Path, tuple] = {}
    for i, b in enumerate(lin_in):
        expected[("convolution_block", "linear_in", _e3j_name(i, b))] = (b.mul_out, b.mul_in)
    for i, b in enumerate(lin_out):
        expected[("convolution_block", "linear_out", _e3j_name(i, b))] = (b.mul_out, b.mul_in)
    sizes = (*layer.radial_mlp_sizes[:-1], width)
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        expected[("convolution_block", "radial_mlp", f"layers_{i}", "kernel")] = (n_in, n_out)
    if layer.use_residual_connection:
        for i, b in enumerate(residual):
            expected[("residual_block", _e3j_name(i, b))] = (
                layer.num_species,
                b.mul_out,
                b.mul_in,
            )
    return expected


def _load_layer(layer: NequipLayer, read: Callable[[Path], np.ndarray]) -> NequipLayer:
    lin_in, lin_out, residual, _ = _full_layer_structure(layer)
    dtype = layer.radial_kernels[0].dtype
    linear_in = [
        read(("convolution_block", "linear_in", _e3j_name(i, b))) for i, b in enumerate(lin_in)
    ]
    linear_out = []
    for k, b in enumerate(layer.linear_out_blocks):
        i = _index_of(lin_out, b)
        w = read(("convolution_block", "linear_out", _e3j_name(i, lin_out[i])))
        cols = mlip_linear_out_columns(layer.paths, k)
        linear_out.append(w[: b.mul_out][:, cols])
    n_kernels = len(layer.radial_kernels)
    kernels = [
        read(("convolution_block", "radial_mlp", f"layers_{i}", "kernel")) for i in range(n_kernels)
    ]
    kernels[-1] = kernels[-1][:, mlip_radial_columns(layer.paths)]
    residuals = []
    for b in layer.residual_blocks:
        i = _index_of(residual, b)
        residuals.append(read(("residual_block", _e3j_name(i, residual[i])))[:, : b.mul_out])

    def cast(arrays: list[np.ndarray]) -> tuple[Any, ...]:
        return tuple(jnp.asarray(a, dtype) for a in arrays)

    return eqx.tree_at(
        lambda m: (m.linear_in_weights, m.linear_out_weights, m.radial_kernels, m.residual_weights),
        layer,
        (cast(linear_in), cast(linear_out), cast(kernels), cast(residuals)),
    )


def nequip_layer_from_mlip(layer: NequipLayer, params: Mapping[str, Any]) -> NequipLayer:
    """Load the parameters of one mlip `NequipLayer` (the subtree `NequipLayer_{i}`, holding
    `convolution_block/{linear_in, linear_out, radial_mlp}` and `residual_block`) into `layer`,
    an eqmlip [`eqmlip.models.nequip.NequipLayer`][] built with the same arguments
    (`scalars_only` layers take the full mlip subtree and keep their part).

    Every leaf is checked by path and shape, zero-size ones included; a missing, extra or
    mis-shaped leaf raises a `ValueError` naming it.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"from_mlip: params must be a mapping, got {type(params).__name__}.")
    read = _Reader("NequipLayer", _flatten(params), _layer_expected(layer))
    return _load_layer(layer, read)


def _symmetric_contraction_expected(block: SymmetricContraction) -> dict[Path, tuple]:
    # e3j's LinearIndexwise: one `(species, channels, m_out = 1, m_in)` weight per output
    # irrep, named by its position in the (sorted, unit-multiplicity) output irreps.
    return {
        ("LinearIndexwise_0", f"weight{i}_{ir.l}_{ir.p}"): (
            block.num_species,
            block.num_channels,
            1,
            int(w.shape[-1]),
        )
        for i, ((_, ir), w) in enumerate(zip(block.irreps_out, block.weights, strict=True))
    }


def symmetric_contraction_from_mlip(
    block: SymmetricContraction, params: Mapping[str, Any]
) -> SymmetricContraction:
    """Load the parameters of one mlip MACE `SymmetricContraction` (the subtree holding
    `LinearIndexwise_0/weight{i}_{l}_{p}`) into `block`, an eqmlip
    [`eqmlip.models.mace.SymmetricContraction`][] built with the same arguments. The weights
    keep mlip's order of copies, so they move as they are (less their `m_out = 1` axis).

    Every leaf is checked by path and shape; a missing, extra or mis-shaped leaf raises a
    `ValueError` naming it.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"from_mlip: params must be a mapping, got {type(params).__name__}.")
    read = _Reader(
        "SymmetricContraction",
        _flatten(params),
        _symmetric_contraction_expected(block),
        hint="Build the eqmlip block with the same source_irreps, keep_irrep_out, correlation, "
        "num_species and num_channels as the mlip block.",
    )
    weights = tuple(
        jnp.asarray(read(path)[:, :, 0, :], w.dtype)
        for path, w in zip(_symmetric_contraction_expected(block), block.weights, strict=True)
    )
    return eqx.tree_at(lambda m: m.weights, block, weights)


def _product_basis_expected(block: EquivariantProductBasisBlock) -> dict[Path, tuple]:
    sc = block.symmetric_contraction
    expected = {
        ("symmetric_contraction", *path): shape
        for path, shape in _symmetric_contraction_expected(sc).items()
    }
    for i, b in enumerate(block.linear.blocks):
        expected[("linear_block", _e3j_name(i, b))] = (b.mul_out, b.mul_in)
    if block.gate_weights is not None and block.gate_bias is not None:
        expected[("species_wise_gate_weights",)] = tuple(block.gate_weights.shape)
        expected[("species_wise_gate_bias",)] = tuple(block.gate_bias.shape)
    return expected


def product_basis_from_mlip(
    block: EquivariantProductBasisBlock, params: Mapping[str, Any]
) -> EquivariantProductBasisBlock:
    """Load the parameters of one mlip MACE `EquivariantProductBasisBlock`
    (`symmetric_contraction`, `linear_block` and, with `gate_nodes`, the
    `species_wise_gate_*` arrays) into `block`, an eqmlip
    [`eqmlip.models.mace.EquivariantProductBasisBlock`][] built with the same arguments.

    Every leaf is checked by path and shape; a missing, extra or mis-shaped leaf raises a
    `ValueError` naming it.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"from_mlip: params must be a mapping, got {type(params).__name__}.")
    flat = _flatten(params)
    read = _Reader(
        "EquivariantProductBasisBlock",
        flat,
        _product_basis_expected(block),
        hint="Build the eqmlip block with the same source_irreps, target_irreps, correlation, "
        "num_species, num_channels and gate_nodes as the mlip block.",
    )
    sub = {p[1:]: v for p, v in flat.items() if p[:1] == ("symmetric_contraction",)}
    sc = symmetric_contraction_from_mlip(block.symmetric_contraction, _unflatten(sub))
    weights = tuple(
        jnp.asarray(read(("linear_block", _e3j_name(i, b))), w.dtype)
        for i, (b, w) in enumerate(zip(block.linear.blocks, block.linear.weights, strict=True))
    )
    linear = eqx.tree_at(lambda m: m.weights, block.linear, weights)
    block = eqx.tree_at(lambda m: (m.symmetric_contraction, m.linear), block, (sc, linear))
    if block.gate_weights is not None and block.gate_bias is not None:
        gw, gb = block.gate_weights, block.gate_bias
        block = eqx.tree_at(
            lambda m: (m.gate_weights, m.gate_bias),
            block,
            (
                jnp.asarray(read(("species_wise_gate_weights",)), gw.dtype),
                jnp.asarray(read(("species_wise_gate_bias",)), gb.dtype),
            ),
        )
    return block


def _unflatten(flat: Mapping[Path, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _embedding_expected(block: NequipEmbeddingBlock) -> dict[Path, tuple]:
    n0 = block.irreps_out.dim
    if block.num_charges is None:
        return {("NodeEmbeddingBlock_0", "embed", "embedding"): (block.num_species, n0)}
    joint = "JointNodeEmbeddingBlock_0"
    return {
        (joint, "species_embedder", "embed", "embedding"): (block.num_species, n0),
        (joint, "charge_embedder", "embed", "embedding"): (block.num_charges, n0),
        (joint, "joint_embedding_projection", "kernel"): (2 * n0, n0),
    }


def _load_embedding(
    block: NequipEmbeddingBlock, read: Callable[[Path], np.ndarray]
) -> NequipEmbeddingBlock:
    dtype = block.species_embedding.dtype
    if block.num_charges is None:
        return eqx.tree_at(
            lambda m: m.species_embedding,
            block,
            jnp.asarray(read(("NodeEmbeddingBlock_0", "embed", "embedding")), dtype),
        )
    joint = "JointNodeEmbeddingBlock_0"
    return eqx.tree_at(
        lambda m: (m.species_embedding, m.charge_embedding, m.joint_projection),
        block,
        (
            jnp.asarray(read((joint, "species_embedder", "embed", "embedding")), dtype),
            jnp.asarray(read((joint, "charge_embedder", "embed", "embedding")), dtype),
            jnp.asarray(read((joint, "joint_embedding_projection", "kernel")), dtype),
        ),
        is_leaf=lambda x: x is None,
    )


def nequip_embedding_from_mlip(
    block: NequipEmbeddingBlock, params: Mapping[str, Any]
) -> NequipEmbeddingBlock:
    """Load the parameters of mlip's `NequipEmbeddingBlock` (the subtree
    `NequipEmbeddingBlock_0`) into an eqmlip [`eqmlip.models.nequip.NequipEmbeddingBlock`][]
    built with the same arguments. Leaves are checked by path and shape."""
    if not isinstance(params, Mapping):
        raise TypeError(f"from_mlip: params must be a mapping, got {type(params).__name__}.")
    read = _Reader("NequipEmbeddingBlock", _flatten(params), _embedding_expected(block))
    return _load_embedding(block, read)


# --- the whole network -------------------------------------------------------------------------


def _readout_expected(
    readout: MultiHeadReadoutBlock,
    latent: e3nn.Irreps,
    prefix: Path = ("MultiHeadReadoutBlock_0",),
) -> dict[Path, tuple]:
    """mlip's readout leaves: per head `ReadoutBlock_{h}/Linear_{k}/weight{i}_{l}_{p}`, with the
    first linear reading the full last-layer irreps `latent` (zero-size weights for l > 0)."""
    expected: dict[Path, tuple] = {}
    for h, head in enumerate(readout.heads):
        source = latent
        for k, layer in enumerate(head.layers):
            assert isinstance(layer, E3jLinear)
            for i, b in enumerate(e3j_blocks(source, layer.irreps_out)):
                path = (*prefix, f"ReadoutBlock_{h}", f"Linear_{k}")
                expected[(*path, _e3j_name(i, b))] = (b.mul_out, b.mul_in)
            source = layer.irreps_out
    return expected


def _load_readout(
    readout: MultiHeadReadoutBlock,
    latent: e3nn.Irreps,
    read: Callable[[Path], np.ndarray],
    prefix: Path = ("MultiHeadReadoutBlock_0",),
) -> MultiHeadReadoutBlock:
    heads = []
    for h, head in enumerate(readout.heads):
        source = latent
        layers = []
        for k, layer in enumerate(head.layers):
            assert isinstance(layer, E3jLinear)
            full = e3j_blocks(source, layer.irreps_out)
            path = (*prefix, f"ReadoutBlock_{h}", f"Linear_{k}")
            weights = []
            for b, w in zip(layer.blocks, layer.weights, strict=True):
                i = next(j for j, f in enumerate(full) if (f.l, f.p) == (b.l, b.p))
                weights.append(jnp.asarray(read((*path, _e3j_name(i, full[i]))), w.dtype))
            layers.append(eqx.tree_at(lambda m: m.weights, layer, tuple(weights)))
            source = layer.irreps_out
        heads.append(eqx.tree_at(lambda m: m.layers, head, tuple(layers)))
    return eqx.tree_at(lambda m: m.heads, readout, tuple(heads))


def _full_latent(layer: NequipLayer) -> e3nn.Irreps:
    """The irreps mlip's last layer outputs (all of them, not only the scalars eqmlip keeps)."""
    scalars, _, nonscalars = split_target_irreps(layer.irreps_in, layer.l_max, layer.target_irreps)
    return scalars + nonscalars


def _network_expected(model: Nequip) -> dict[Path, tuple]:
    expected: dict[Path, tuple] = {}
    for path, shape in _embedding_expected(model.embedding).items():
        expected[("NequipEmbeddingBlock_0", *path)] = shape
    for i, layer in enumerate(model.layers):
        for path, shape in _layer_expected(layer).items():
            expected[(f"NequipLayer_{i}", *path)] = shape
    latent = _full_latent(model.layers[-1])
    for path, shape in _readout_expected(model.readout, latent).items():
        expected[("NequipMultiHeadReadoutBlock_0", *path)] = shape
    return expected


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _config(config: Any) -> NequipConfig:
    if isinstance(config, NequipConfig):
        return config
    values = {}
    for f in dataclasses.fields(NequipConfig):
        missing = object()
        value = _field(config, f.name, missing)
        if value is not missing:
            values[f.name] = value
    # Deprecated and ignored by mlip too (which has already warned about it).
    values["num_species"] = None
    return NequipConfig(**values)


def _network_params(params: Any) -> dict[Path, Any]:
    """mlip's network parameters as `{path: leaf}`, paths relative to `mlip_network`."""
    params = getattr(params, "params", params)  # an mlip ForceField
    if not isinstance(params, Mapping):
        raise TypeError(
            "from_mlip: params must be mlip's parameter mapping ({'params': {'mlip_network': "
            f"...}}) or a ForceField, got {type(params).__name__}."
        )
    flat = _flatten(params)
    for key in ("params", "mlip_network"):
        if flat and all(path[:1] == (key,) for path in flat):
            flat = {path[1:]: value for path, value in flat.items()}
    return flat


def from_mlip(params: Any, config: Any, dataset_info: Any, *, dtype: Any = None) -> Nequip | Mace:
    """Build an eqmlip [`eqmlip.models.nequip.Nequip`][] or [`eqmlip.models.mace.Mace`][] from
    an mlip 0.2.5 NequIP or MACE model (which one: from the kind of `config`, or for a plain
    mapping from its fields and the parameters' top-level names).

    **Arguments:**

    - `params`: mlip's parameters, `ForceField.params` (`{"params": {"mlip_network": ...}}`,
        any of the two outer levels may be omitted) as nested mappings of arrays (a
        `FrozenDict`), the flat `{"params#mlip_network#...": array}` mapping of the
        `params.npz` in mlip's model zip, or the `ForceField` itself.
    - `config`: mlip's `NequipConfig` or `MaceConfig` (or `Nequip.Config(...)`), an eqmlip
        [`eqmlip.models.nequip.NequipConfig`][] or [`eqmlip.models.mace.MaceConfig`][], or a
        mapping of its fields (e.g. the `"config"` of the zip's `hyperparams.json`).
    - `dataset_info`: mlip's `DatasetInfo`, or a mapping with its fields:
        `atomic_energies_map` (one `{Z: E0}` or a list per dataset), `graph_cutoff_angstrom`,
        `avg_num_neighbors` (default 1.0, as mlip), and optionally `total_charge_set`,
        `long_range_cutoff_angstrom`, `avg_r_min_angstrom` (MACE), `scaling_mean`,
        `scaling_stdev` (e.g. the
        `"dataset_info"` of the zip's `hyperparams.json`, atomic numbers as strings).
    - `dtype`: parameter dtype; `None` is the default floating dtype.

    Every mlip leaf is checked by path and shape (zero-size ones included); a missing, extra
    or mis-shaped leaf raises a `ValueError` naming it. Leaves that only feed what NequIP's
    readout never reads (the last layer's nonscalars and gates) are checked, then dropped.

    **Returns:** the model, ready to call (e.g. with [`eqmlip.potential.predict`][]).
    """
    if _is_mace(params, config):
        return _mace_from_mlip(params, config, dataset_info, dtype=dtype)
    config = _config(config)
    kwargs, energies, species = _dataset_kwargs(dataset_info, dtype)
    # Built abstractly: every array is then filled from mlip's parameters.
    model = eqx.filter_eval_shape(Nequip, config, species, key=jax.random.key(0), **kwargs)
    read = _Reader("Nequip", _network_params(params), _network_expected(model))
    return _fill_nequip(model, read, energies, species)


def _dataset_kwargs(dataset_info: Any, dtype: Any) -> tuple[dict[str, Any], Any, tuple[int, ...]]:
    """The model constructor's dataset arguments from mlip's `DatasetInfo` (or its fields)."""
    energies = _field(dataset_info, "atomic_energies_map")
    if energies is None:
        raise ValueError("from_mlip: dataset_info has no atomic_energies_map.")
    # Atomic numbers may be strings (JSON keys in mlip's hyperparams.json).
    maps = [
        {int(z): float(e) for z, e in m.items()}
        for m in ([energies] if isinstance(energies, Mapping) else list(energies))
    ]
    energies = maps[0] if isinstance(energies, Mapping) else maps
    species = tuple(sorted({z for m in maps for z in m}))
    cutoff = _field(dataset_info, "graph_cutoff_angstrom")
    if cutoff is None:
        raise ValueError("from_mlip: dataset_info has no graph_cutoff_angstrom.")
    charge_set = _field(dataset_info, "total_charge_set")
    kwargs = dict(
        cutoff=float(cutoff),
        avg_num_neighbors=float(_field(dataset_info, "avg_num_neighbors", 1.0)),
        atomic_energies=energies,
        total_charges=None if charge_set is None else tuple(int(q) for q in charge_set),
        long_range_cutoff=_field(dataset_info, "long_range_cutoff_angstrom"),
        energy_scale=float(_field(dataset_info, "scaling_stdev", 1.0)),
        energy_shift=float(_field(dataset_info, "scaling_mean", 0.0)),
        dtype=dtype,
    )
    return kwargs, energies, species


def _fill_nequip(
    model: Nequip, read: Callable[[Path], np.ndarray], energies: Any, species: tuple[int, ...]
) -> Nequip:
    def sub(prefix: str) -> Callable[[Path], np.ndarray]:
        return lambda path: read((prefix, *path))

    param_dtype = model.atomic_energies.dtype
    embedding = _load_embedding(model.embedding, sub("NequipEmbeddingBlock_0"))
    layers = tuple(
        _load_layer(layer, sub(f"NequipLayer_{i}")) for i, layer in enumerate(model.layers)
    )
    readout = _load_readout(
        model.readout, _full_latent(model.layers[-1]), sub("NequipMultiHeadReadoutBlock_0")
    )
    table = jnp.asarray(_atomic_energy_table(energies, species), param_dtype)
    model = eqx.tree_at(
        lambda m: (m.embedding, m.layers, m.readout, m.atomic_energies),
        model,
        (embedding, layers, readout, table),
    )
    abstract = [x for x in jax.tree.leaves(model) if isinstance(x, jax.ShapeDtypeStruct)]
    assert not abstract, abstract
    return model


# --- MACE ----------------------------------------------------------------------------------------


def _is_mace(params: Any, config: Any) -> bool:
    """Whether `config` (and the parameters) describe a MACE rather than a NequIP."""
    if isinstance(config, MaceConfig) or type(config).__name__ == "MaceConfig":
        return True
    if isinstance(config, NequipConfig) or type(config).__name__ == "NequipConfig":
        return False
    if isinstance(config, Mapping):
        if "correlation" in config or "num_channels" in config:
            return True
        if "target_irreps" in config:
            return False
    try:
        flat = _network_params(params)
    except TypeError:
        return False
    return any(path[:1] == ("embedding_block",) for path in flat)


def _mace_config(config: Any) -> MaceConfig:
    """An eqmlip `MaceConfig` from mlip's (or a mapping of its fields). mlip 0.2.5's MACE reads
    `avg_num_neighbors` and `avg_r_min` from the dataset info only, never from its config, so
    they are cleared here and taken from the dataset info."""
    if isinstance(config, MaceConfig):
        values = {f.name: getattr(config, f.name) for f in dataclasses.fields(MaceConfig)}
    else:
        values = {}
        for f in dataclasses.fields(MaceConfig):
            missing = object()
            value = _field(config, f.name, missing)
            if value is not missing:
                values[f.name] = value
    values.update(num_species=None, avg_num_neighbors=None, avg_r_min=None)
    return MaceConfig(**values)


def _mace_embedding_expected(block: NequipEmbeddingBlock) -> dict[Path, tuple]:
    n0 = block.irreps_out.dim
    if block.num_charges is None:
        return {("node_embedding_block", "embed", "embedding"): (block.num_species, n0)}
    joint = "node_embedding_block"
    return {
        (joint, "species_embedder", "embed", "embedding"): (block.num_species, n0),
        (joint, "charge_embedder", "embed", "embedding"): (block.num_charges, n0),
        (joint, "joint_embedding_projection", "kernel"): (2 * n0, n0),
    }


def _load_mace_embedding(
    block: NequipEmbeddingBlock, read: Callable[[Path], np.ndarray]
) -> NequipEmbeddingBlock:
    """mlip's `MaceEmbeddingBlock` names its node embedding `node_embedding_block`, where
    NequIP's has `NodeEmbeddingBlock_0` / `JointNodeEmbeddingBlock_0`; the leaves are alike."""

    def renamed(path: Path) -> Path:
        if path[0] == "NodeEmbeddingBlock_0" or path[0] == "JointNodeEmbeddingBlock_0":
            return ("node_embedding_block", *path[1:])
        return path

    return _load_embedding(block, lambda path: read(renamed(path)))


def _mace_layer_blocks(layer: MaceLayer) -> tuple[LinearBlock, ...]:
    """mlip's linear_out blocks (onto every interaction irrep, zero-size where no message)."""
    return e3j_blocks(layer.message_irreps, layer.interaction_irreps)


def _mace_layer_expected(layer: MaceLayer) -> dict[Path, tuple]:
    expected: dict[Path, tuple] = {}
    conv = "interaction_block"
    for i, b in enumerate(layer.linear_in_blocks):
        expected[(conv, "linear_in", _e3j_name(i, b))] = (b.mul_out, b.mul_in)
    for i, b in enumerate(_mace_layer_blocks(layer)):
        expected[(conv, "linear_out", _e3j_name(i, b))] = (b.mul_out, b.mul_in)
    sizes = layer.radial_mlp_sizes
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        expected[(conv, "radial_mlp", f"layers_{i}", "kernel")] = (n_in, n_out)
    skip = "residual_block" if layer.use_residuals else "linear_by_species_block"
    for i, b in enumerate(layer.skip_blocks):
        expected[(skip, _e3j_name(i, b))] = (layer.num_species, b.mul_out, b.mul_in)
    for path, shape in _product_basis_expected(layer.product).items():
        expected[("expansion_block", *path)] = shape
    for path, shape in _readout_expected(layer.readout, layer.irreps_out, ()).items():
        expected[("readout_block", *path)] = shape
    return expected


def _load_mace_layer(layer: MaceLayer, read: Callable[[Path], np.ndarray]) -> MaceLayer:
    dtype = layer.radial_kernels[0].dtype
    conv = "interaction_block"
    linear_in = [
        read((conv, "linear_in", _e3j_name(i, b))) for i, b in enumerate(layer.linear_in_blocks)
    ]
    full = _mace_layer_blocks(layer)
    linear_out = []
    for k, b in enumerate(layer.linear_out_blocks):
        i = _index_of(full, b)
        w = read((conv, "linear_out", _e3j_name(i, full[i])))
        linear_out.append(w[:, mlip_linear_out_columns(layer.paths, k)])
    kernels = [
        read((conv, "radial_mlp", f"layers_{i}", "kernel"))
        for i in range(len(layer.radial_kernels))
    ]
    kernels[-1] = kernels[-1][:, mlip_radial_columns(layer.paths)]
    skip = "residual_block" if layer.use_residuals else "linear_by_species_block"
    skips = [read((skip, _e3j_name(i, b))) for i, b in enumerate(layer.skip_blocks)]
    flat = {
        path[1:]: read(path)
        for path in _mace_layer_expected(layer)
        if path[:1] == ("expansion_block",)
    }
    product = product_basis_from_mlip(layer.product, _unflatten(flat))
    readout = _load_readout(
        layer.readout, layer.irreps_out, lambda path: read(("readout_block", *path)), ()
    )

    def cast(arrays: list[np.ndarray]) -> tuple[Any, ...]:
        return tuple(jnp.asarray(a, dtype) for a in arrays)

    return eqx.tree_at(
        lambda m: (
            m.linear_in_weights,
            m.linear_out_weights,
            m.radial_kernels,
            m.skip_weights,
            m.product,
            m.readout,
        ),
        layer,
        (cast(linear_in), cast(linear_out), cast(kernels), cast(skips), product, readout),
    )


def mace_layer_from_mlip(layer: MaceLayer, params: Mapping[str, Any]) -> MaceLayer:
    """Load the parameters of one mlip `MaceLayer` (the subtree `layers_{i}`:
    `interaction_block`, `residual_block` or `linear_by_species_block`, `expansion_block`,
    `readout_block`) into `layer`, an eqmlip [`eqmlip.models.mace.MaceLayer`][] built with the
    same arguments. Every leaf is checked by path and shape."""
    if not isinstance(params, Mapping):
        raise TypeError(f"from_mlip: params must be a mapping, got {type(params).__name__}.")
    read = _Reader(
        "MaceLayer",
        _flatten(params),
        _mace_layer_expected(layer),
        hint="Build the eqmlip layer with the same arguments as the mlip layer.",
    )
    return _load_mace_layer(layer, read)


def _mace_expected(model: Mace) -> dict[Path, tuple]:
    expected: dict[Path, tuple] = {}
    for path, shape in _mace_embedding_expected(model.embedding).items():
        expected[("embedding_block", *path)] = shape
    for i, layer in enumerate(model.layers):
        for path, shape in _mace_layer_expected(layer).items():
            expected[(f"layers_{i}", *path)] = shape
    return expected


def _mace_from_mlip(params: Any, config: Any, dataset_info: Any, *, dtype: Any) -> Mace:
    config = _mace_config(config)
    kwargs, energies, species = _dataset_kwargs(dataset_info, dtype)
    r_min = _field(dataset_info, "avg_r_min_angstrom")
    kwargs["avg_r_min"] = None if r_min is None else float(r_min)
    model = eqx.filter_eval_shape(Mace, config, species, key=jax.random.key(0), **kwargs)
    read = _Reader(
        "Mace",
        _network_params(params),
        _mace_expected(model),
        hint="Build the eqmlip model from the same MaceConfig and dataset information as the "
        "mlip model.",
    )

    def sub(*prefix: str) -> Callable[[Path], np.ndarray]:
        return lambda path: read((*prefix, *path))

    embedding = _load_mace_embedding(model.embedding, sub("embedding_block"))
    layers = tuple(
        _load_mace_layer(layer, sub(f"layers_{i}")) for i, layer in enumerate(model.layers)
    )
    table = jnp.asarray(_atomic_energy_table(energies, species), model.atomic_energies.dtype)
    model = eqx.tree_at(
        lambda m: (m.embedding, m.layers, m.atomic_energies), model, (embedding, layers, table)
    )
    abstract = [x for x in jax.tree.leaves(model) if isinstance(x, jax.ShapeDtypeStruct)]
    assert not abstract, abstract
    return model
