"""How inputs and outputs transform under `x -> M x + t`: declarations and their actions.

Every action is computed on the host in float64 (NumPy), so it compiles nothing and adds no
error of its own beyond one rounding to the leaf's dtype.
"""

import contextlib
import dataclasses
import functools
from typing import Any

import e3nn_jax as e3nn
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..graph import Graph
from ..ops.so3 import _to_e3nn_matrix

Matrix = Float[np.ndarray, "3 3"] | Float[Array, "3 3"]

#: The named actions; anything else given as a string is read as irreps (`"1o"`, `"2x0e + 1e"`).
KINDS = ("invariant", "vector", "positions", "cell", "tensor")


@dataclasses.dataclass(frozen=True)
class E3xLayout:
    """Declares an array in e3x's feature layout `(..., P, (L+1)**2, F)` for
    [`eqmlip.testing.assert_equivariant`][].

    `P` (1 or 2) and `L` are read off the shape. With `P=2` parity channel 0 holds the even
    irreps `0e, 1e, 2e, ...` and channel 1 the odd ones; with `P=1` only the proper irreps
    `0e, 1o, 2e, ...` are stored (see [`eqmlip.ops.layouts`][]). A rotation `R` acts on the
    degree-`l` block of every channel and feature by e3x's Wigner matrix (degree 1 is `(x, y,
    z)` in Cartesian order, so `x -> R x` there), and the inversion multiplies a block by its
    parity.

    **Arguments:**

    - `cartesian_order`: the order of `m` inside each block, as e3x's argument of that name:
        `True` (e3x's default; degree 1 is `(x, y, z)`) or `False` (`m = -l..l`).
    """

    cartesian_order: bool = True


Spec = str | e3nn.Irreps | E3xLayout | None


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, str | e3nn.Irreps | E3xLayout)


def _is_atom(x: Any) -> bool:
    """Leaves of the default rule: IrrepsArrays and Graphs are handled whole."""
    return isinstance(x, e3nn.IrrepsArray | Graph)


@functools.cache
def _cg_basis(degree: int) -> Float[np.ndarray, "in out"]:
    """e3nn's Clebsch-Gordan map `(degree-1) x 1 -> degree`, with orthonormal columns."""
    c = np.asarray(e3nn.clebsch_gordan(degree - 1, 1, degree), dtype=np.float64)
    c = c.reshape(-1, 2 * degree + 1)
    return c / np.linalg.norm(c[:, 0])


def _wigner_ds(lmax: int, rotation: Float[np.ndarray, "3 3"]) -> list:
    """Wigner matrices `D^l(R)` in e3nn's real basis for `l <= lmax`, in float64 on the host.

    `D^0 = 1` and `D^1 = R` (degree 1 is `(x, y, z)`); `D^l` is the restriction of
    `D^(l-1) (x) D^1` to the image of the Clebsch-Gordan map. This agrees with
    `e3nn.Irrep(l, p).D_from_matrix(R)` to rounding, without compiling anything.
    """
    ds = [np.ones((1, 1)), rotation]
    for degree in range(2, lmax + 1):
        c = _cg_basis(degree)
        ds.append(c.T @ np.kron(ds[-1], rotation) @ c)
    return ds[: lmax + 1]


def _sign(matrix: np.ndarray) -> float:
    return 1.0 if np.linalg.det(matrix) > 0 else -1.0


def _act(irreps: e3nn.Irreps, array: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """`IrrepsArray(irreps, array).transform_by_matrix(matrix).array`, in float64 on the host.

    For `matrix = s R` with `s = det(matrix) = +-1` and `R` a rotation, a `mul x lp` chunk is
    multiplied by `p^((1-s)/2) D^l(R)`.
    """
    sign = _sign(matrix)
    lmax = max((ir.l for mul, ir in irreps if mul > 0), default=0)
    ds = _wigner_ds(lmax, sign * matrix)
    out = np.empty_like(array)
    lead = array.shape[:-1]
    for (mul, ir), chunk in zip(irreps, irreps.slices(), strict=True):
        if mul == 0:
            continue
        d = ds[ir.l] * (ir.p if sign < 0 else 1)
        x = array[..., chunk].reshape(lead + (mul, ir.dim))
        out[..., chunk] = np.einsum("ij,...uj->...ui", d, x).reshape(lead + (mul * ir.dim,))
    return out


def _act_e3x(array: np.ndarray, matrix: np.ndarray, cartesian_order: bool) -> np.ndarray:
    """The action on e3x features `(..., P, (L+1)**2, F)`: e3nn's `D^l` moved to e3x's basis."""
    num_parity, dim = array.shape[-3], array.shape[-2]
    lmax = int(round(np.sqrt(dim))) - 1
    sign = _sign(matrix)
    ds = _wigner_ds(lmax, sign * matrix)
    out = np.empty_like(array)
    for degree in range(lmax + 1):
        # x_e3nn = T x_e3x (T orthogonal), so x_e3x -> T^T D T x_e3x.
        t = _to_e3nn_matrix(degree, cartesian_order)
        d = t.T @ ds[degree] @ t
        block = slice(degree * degree, (degree + 1) ** 2)
        for channel in range(num_parity):
            parity = (-1) ** degree if num_parity == 1 else (1, -1)[channel]
            factor = parity if sign < 0 else 1
            x = array[..., channel, block, :]
            out[..., channel, block, :] = factor * np.einsum("ij,...jf->...if", d, x)
    return out


@dataclasses.dataclass(frozen=True)
class _Action:
    """A resolved declaration: how one array leaf moves under `x -> M x + t`."""

    kind: str  # one of KINDS, "irreps" or "e3x"
    irreps: e3nn.Irreps | None = None
    cartesian_order: bool = True

    def describe(self) -> str:
        if self.kind == "irreps":
            return f"irreps {self.irreps}"
        if self.kind == "e3x":
            return f"e3x layout (cartesian_order={self.cartesian_order})"
        return repr(self.kind)

    def component(self, index: tuple) -> str:
        """Names the component at `index` of a leaf that transforms this way, e.g. `atom 3, y`."""
        xyz = "xyz"
        if self.kind in ("vector", "positions") and index:
            if len(index) == 1:
                return xyz[index[0]]
            # An (n, 3) array of positions or forces has one row per atom.
            row = f"atom {index[0]}" if len(index) == 2 else f"entry {index[:-1]}"
            return f"{row}, {xyz[index[-1]]}"
        if self.kind in ("cell", "tensor") and len(index) >= 2:
            a, b = index[-2:]
            if self.kind == "cell":
                return f"lattice vector {a}, {xyz[b]}"
            return f"{xyz[a]}{xyz[b]}"
        if self.kind == "irreps" and self.irreps is not None and index:
            offset = 0
            for entry, (mul, ir) in enumerate(self.irreps):
                if index[-1] < offset + mul * ir.dim:
                    copy, m = divmod(index[-1] - offset, ir.dim)
                    return (
                        f"irreps entry {entry} ({mul}x{ir}), copy {copy}, component {m} of {ir.dim}"
                    )
                offset += mul * ir.dim
        if self.kind == "e3x" and len(index) >= 3:
            p, lm, f = index[-3:]
            degree = int(np.sqrt(lm))
            return f"parity channel {p}, l={degree}, m={lm - degree * degree - degree}, feature {f}"
        return ""

    def check_shape(self, name: str, shape: tuple) -> None:
        expected = {
            "vector": "(..., 3)",
            "positions": "(..., 3)",
            "cell": "(..., 3, 3)",
            "tensor": "(..., 3, 3)",
        }
        ok = True
        if self.kind in ("vector", "positions"):
            ok = len(shape) >= 1 and shape[-1] == 3
        elif self.kind in ("cell", "tensor"):
            ok = len(shape) >= 2 and shape[-2:] == (3, 3)
        elif self.kind == "irreps":
            assert self.irreps is not None
            ok = len(shape) >= 1 and shape[-1] == self.irreps.dim
            expected[self.kind] = f"(..., {self.irreps.dim}) for irreps {self.irreps}"
        elif self.kind == "e3x":
            dim = shape[-2] if len(shape) >= 3 else 0
            ok = len(shape) >= 3 and shape[-3] in (1, 2) and dim > 0
            ok = ok and int(round(np.sqrt(dim))) ** 2 == dim
            expected[self.kind] = "(..., P, (L+1)**2, F) with P in (1, 2)"
        if not ok:
            raise ValueError(
                f"{name} is declared {self.describe()}, which needs shape "
                f"{expected[self.kind]}, but has shape {shape}."
            )

    def apply(self, array: np.ndarray, matrix: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """`g . array` in float64."""
        if self.kind == "invariant":
            return array
        if self.kind == "vector":
            return array @ matrix.T
        if self.kind == "positions":
            return array @ matrix.T + shift
        if self.kind == "cell":  # lattice vectors as rows
            return array @ matrix.T
        if self.kind == "tensor":  # a rank-2 Cartesian tensor such as the stress
            return matrix @ array @ matrix.T
        if self.kind == "irreps":
            assert self.irreps is not None
            return _act(self.irreps, array, matrix)
        return _act_e3x(array, matrix, self.cartesian_order)


INVARIANT = _Action("invariant")


def resolve(spec: Spec, name: str, caller: str) -> _Action | None:
    """The action a declaration names (`None` stays `None`: the default rule)."""
    if spec is None:
        return None
    if isinstance(spec, E3xLayout):
        return _Action("e3x", cartesian_order=spec.cartesian_order)
    if isinstance(spec, str) and spec in KINDS:
        return _Action(spec)
    try:
        return _Action("irreps", irreps=e3nn.Irreps(spec))
    except ValueError as e:
        raise ValueError(
            f"{caller}: cannot read the declaration {spec!r} of {name}: expected one of "
            f"{KINDS}, irreps such as '1o' or '2x0e + 1e', or testing.E3xLayout(); ({e})"
        ) from e


def _path(prefix: str, path: Any) -> str:
    return f"{prefix}{jax.tree_util.keystr(path)}"


def declared_leaves(
    specs: Any, tree: Any, prefix: str, argument: str, caller: str
) -> tuple[list, Any]:
    """Pair every atom of `tree` with its declaration.

    `specs` is a prefix pytree of `tree` (as `in_axes` of `jax.vmap`): a declaration at a node
    covers every leaf below it. Returns `[(name, spec, leaf)]` in flattening order and the
    treedef that rebuilds `tree` from its leaves.
    """

    class _Held:  # hides a declaration (which may be None) from tree_map as a leaf
        def __init__(self, spec: Spec) -> None:
            self.spec = spec

    def expand(spec: Spec, subtree: Any) -> Any:
        return jax.tree_util.tree_map(lambda _: _Held(spec), subtree, is_leaf=_is_atom)

    try:
        expanded = jax.tree_util.tree_map(expand, specs, tree, is_leaf=_is_spec)
    except (ValueError, TypeError) as e:
        structure = jax.tree_util.tree_structure(tree, is_leaf=_is_atom)
        raise ValueError(
            f"{caller}: {argument} must be a prefix of the structure of the {prefix}s, with "
            f"one declaration per leaf or subtree; got {argument}={specs!r} for {structure}."
        ) from e
    held = jax.tree_util.tree_leaves(expanded, is_leaf=lambda x: isinstance(x, _Held))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_atom)
    assert len(held) == len(leaves)
    return [
        (_path(prefix, p), h.spec, leaf) for h, (p, leaf) in zip(held, leaves, strict=True)
    ], treedef


def describe(x: Any) -> str:
    if isinstance(x, e3nn.IrrepsArray):
        return f"IrrepsArray {x.irreps}, shape {x.shape}, {x.dtype}"
    if isinstance(x, Graph):
        return f"Graph with {x.positions.shape[0]} nodes"
    if isinstance(x, jax.Array | np.ndarray | np.generic | float | int | complex):
        return f"array, shape {np.shape(x)}, {np.asarray(x).dtype}"
    return type(x).__name__


def _x64_enabled() -> bool:
    return jax.dtypes.canonicalize_dtype(np.float64) == np.dtype(np.float64)


def rebuild_like(original: Any, array: np.ndarray) -> Any:
    """`array` (float64) rounded once to the dtype of `original`, on the same backend."""
    dtype = np.asarray(original).dtype if not isinstance(original, jax.Array) else original.dtype
    array = array.astype(dtype)
    if isinstance(original, np.ndarray | np.generic | float | int):
        return array
    # Keep a float64 input float64 (the caller checked that x64 is on).
    with jax.enable_x64(True) if dtype.itemsize == 8 else contextlib.nullcontext():
        return jnp.asarray(array)


def _check_float(name: str, x: Any, action: _Action, caller: str) -> np.dtype:
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{caller}: {name} ({describe(x)}) is declared {action.describe()}, but only real "
            "floating arrays can be transformed; declare it 'invariant' if it is."
        )
    if dtype == np.float64 and not _x64_enabled():
        raise ValueError(
            f"{caller}: {name} is float64 but jax_enable_x64 is off, so a JAX fn would "
            "compute in float32 and a float64-only error would pass; call the assertion "
            "inside `with jax.enable_x64(True):` (or pass float32 inputs)."
        )
    return dtype


def transform_input(
    name: str, spec: Spec, x: Any, matrix: np.ndarray, shift: np.ndarray, caller: str
) -> tuple[Any, list]:
    """`g . x` for one input atom, and the names of the arrays that moved."""
    action = resolve(spec, name, caller)
    if isinstance(x, Graph):
        if action is not None and action.kind != "invariant":
            raise ValueError(
                f"{caller}: {name} is an eqmlip.Graph, declared {action.describe()}; a Graph is "
                "transformed as a whole (positions as 'positions', cell as 'cell'): declare it "
                "None, or 'invariant' to pass it unchanged."
            )
        if action is not None:
            return x, []
        moved = []
        new = []
        for field, kind in (("positions", "positions"), ("cell", "cell")):
            value = getattr(x, field)
            leaf_action = _Action(kind)
            _check_float(f"{name}.{field}", value, leaf_action, caller)
            array = leaf_action.apply(np.asarray(value, np.float64), matrix, shift)
            new.append(rebuild_like(value, array))
            moved.append(f"{name}.{field}")
        return _replace_graph(x, *new), moved
    if isinstance(x, e3nn.IrrepsArray):
        if action is None or (action.kind == "irreps" and action.irreps == x.irreps):
            action = _Action("irreps", irreps=x.irreps)
        elif action.kind == "vector" and x.irreps == e3nn.Irreps("1o"):
            action = _Action("irreps", irreps=x.irreps)
        elif action.kind != "invariant":
            raise ValueError(
                f"{caller}: {name} is an IrrepsArray {x.irreps}, declared "
                f"{action.describe()}; an IrrepsArray transforms by its own irreps: declare it "
                "None (or its irreps), or 'invariant' to pass it unchanged."
            )
        if action.kind == "invariant":
            return x, []
        _check_float(name, x, action, caller)
        array = action.apply(np.asarray(x.array, np.float64), matrix, shift)
        return e3nn.IrrepsArray(x.irreps, rebuild_like(x.array, array)), [name]
    if action is None or action.kind == "invariant":
        return x, []  # the default rule passes plain leaves through
    if not isinstance(x, jax.Array | np.ndarray | np.generic | float | int):
        raise TypeError(
            f"{caller}: {name} is a {type(x).__name__}, declared {action.describe()}; only "
            "arrays can be transformed."
        )
    _check_float(name, x, action, caller)
    action.check_shape(name, np.shape(x))
    return rebuild_like(x, action.apply(np.asarray(x, np.float64), matrix, shift)), [name]


def _replace_graph(graph: Graph, positions: Any, cell: Any) -> Graph:
    return eqx.tree_at(lambda g: (g.positions, g.cell), graph, (positions, cell))


def output_action(name: str, spec: Spec, x: Any, caller: str, argument: str) -> _Action:
    """The action of one output leaf; plain arrays must be declared."""
    action = resolve(spec, name, caller)
    if isinstance(x, e3nn.IrrepsArray):
        if action is None or (action.kind == "irreps" and action.irreps == x.irreps):
            return _Action("irreps", irreps=x.irreps)
        if action.kind == "vector" and x.irreps == e3nn.Irreps("1o"):
            return _Action("irreps", irreps=x.irreps)
        raise ValueError(
            f"{caller}: {name} is an IrrepsArray {x.irreps} but is declared "
            f"{action.describe()} in {argument}; an IrrepsArray output transforms by its own "
            "irreps (declare it None)."
        )
    if isinstance(x, Graph):
        raise TypeError(
            f"{caller}: {name} is an eqmlip.Graph; return its arrays (positions, ...) instead."
        )
    if action is None:
        raise TypeError(
            f"{caller}: {name} ({describe(x)}) is a plain array and {argument} does not say how "
            "it transforms; declare it, e.g. "
            f"{argument}='invariant' (energies, norms), 'vector' (forces), 'tensor' (stress), "
            "'positions', irreps such as '2x1o', or testing.E3xLayout()."
        )
    action.check_shape(name, np.shape(x))
    return action
