"""Equivariance checks: compare `fn(g.x)` with `g.fn(x)` for one orthogonal matrix `g`."""

import dataclasses
from collections.abc import Callable
from typing import Any

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..graph import Graph
from . import _actions
from ._actions import (
    Matrix,
    _act as _act,  # the host-side action, used by tests of conversions
)
from ._checks import (
    _check_matrix as _check_matrix,
    _check_translation as _check_translation,
    default_tolerance as default_tolerance,
)

Translation = Float[np.ndarray, "3"] | Float[Array, "3"]


@dataclasses.dataclass(frozen=True)
class _LeafComparison:
    name: str
    description: str
    actual: np.ndarray  # fn(g.x), float64
    expected: np.ndarray  # g.fn(x), float64
    dtype: np.dtype
    action: Any = None  # the output's _Action, to name a component

    def abs_error(self) -> np.ndarray:
        return np.asarray(np.abs(self.actual - self.expected))  # an array for 0-d leaves too


def _as_float64(name: str, x: Any) -> np.ndarray:
    array = np.asarray(x)
    if array.dtype.kind not in "biufc":
        raise TypeError(
            f"{name} is not numeric (got {type(x).__name__} of dtype {array.dtype}); fn must "
            "return IrrepsArrays, arrays or numbers (in any pytree)."
        )
    return array.astype(np.complex128 if array.dtype.kind == "c" else np.float64)


def _transform_inputs(
    caller: str, inputs: tuple, in_actions: Any, matrix: np.ndarray, shift: np.ndarray
) -> tuple:
    declared, treedef = _actions.declared_leaves(
        tuple(in_actions) if isinstance(in_actions, list) else in_actions,
        inputs,
        "input",
        "in_actions",
        caller,
    )
    moved: list[str] = []
    new_leaves = []
    for name, spec, leaf in declared:
        new, names = _actions.transform_input(name, spec, leaf, matrix, shift, caller)
        new_leaves.append(new)
        moved.extend(names)
    if not moved:
        received = "; ".join(f"{n}: {_actions.describe(x)}" for n, _, x in declared) or "none"
        raise ValueError(
            f"{caller}: no input is transformed, so the check would pass for any fn. Only "
            "IrrepsArrays and eqmlip.Graphs are transformed by default; declare how plain "
            "arrays transform with in_actions (e.g. in_actions=('positions', 'invariant') for "
            f"fn(positions, species), or testing.E3xLayout() for e3x features). Received: "
            f"{received}."
        )
    if np.any(shift != 0) and not any(
        isinstance(x, Graph) or _actions.resolve(s, n, caller) == _actions._Action("positions")
        for n, s, x in declared
    ):
        raise ValueError(
            f"{caller}: a translation was given but no input is positions; declare the "
            "positions with in_actions=... 'positions' (or pass an eqmlip.Graph)."
        )
    return jax.tree_util.tree_unflatten(treedef, new_leaves)


def _compare(
    caller: str,
    fn: Callable[..., Any],
    inputs: tuple,
    matrix: Any,
    translation: Any,
    in_actions: Any,
    out_actions: Any,
) -> list:
    matrix = _check_matrix(caller, matrix)
    shift = _check_translation(caller, translation)
    g_inputs = _transform_inputs(caller, inputs, in_actions, matrix, shift)
    out_of_g = fn(*g_inputs)
    out = fn(*inputs)

    leaves_of_g, tree_of_g = jax.tree_util.tree_flatten_with_path(
        out_of_g, is_leaf=_actions._is_atom
    )
    if jax.tree_util.tree_structure(out, is_leaf=_actions._is_atom) != tree_of_g:
        tree = jax.tree_util.tree_structure(out, is_leaf=_actions._is_atom)
        raise AssertionError(
            "fn(g.x) and fn(x) have different pytree structures:\n"
            f"  fn(g.x): {tree_of_g}\n  fn(x):   {tree}"
        )
    declared, _ = _actions.declared_leaves(out_actions, out, "output", "out_actions", caller)

    comparisons = []
    for (name, spec, b), (_, a) in zip(declared, leaves_of_g, strict=True):
        _as_float64(name, b.array if isinstance(b, e3nn.IrrepsArray) else b)
        action = _actions.output_action(name, spec, b, caller, "out_actions")
        if isinstance(b, e3nn.IrrepsArray):
            if not isinstance(a, e3nn.IrrepsArray) or a.irreps != b.irreps:
                raise AssertionError(
                    f"{name}: fn(g.x) gives {_actions.describe(a)} but fn(x) gives "
                    f"{_actions.describe(b)}."
                )
            if not jnp.issubdtype(b.dtype, jnp.floating):
                raise TypeError(
                    f"{name} is an IrrepsArray of dtype {b.dtype}; only real floating "
                    "IrrepsArrays can be transformed."
                )
            a_array, b_array = a.array, b.array
        else:
            a_array, b_array = a, b
        if np.shape(a_array) != np.shape(b_array):
            raise AssertionError(
                f"{name}: fn(g.x) has shape {np.shape(a_array)} but fn(x) has shape "
                f"{np.shape(b_array)}."
            )
        expected = _as_float64(name, b_array)
        if action.kind != "invariant":
            if expected.dtype.kind == "c":
                raise TypeError(f"{name} is complex; only real outputs can be transformed.")
            expected = action.apply(expected, matrix, shift)
        comparisons.append(
            _LeafComparison(
                name=name,
                description=f"{_actions.describe(b)}, declared {action.describe()}",
                actual=_as_float64(name, a_array),
                expected=expected,
                dtype=np.asarray(b_array).dtype
                if not hasattr(b_array, "dtype")
                else np.dtype(b_array.dtype),
                action=action,
            )
        )
    return comparisons


def equivariance_error(
    fn: Callable[..., Any],
    *inputs: Any,
    matrix: Matrix,
    translation: Translation | None = None,
    in_actions: Any = None,
    out_actions: Any = None,
) -> float:
    """The largest equivariance error of `fn` under `g: x -> M x + t`, `M = matrix`.

    Computes `max |fn(g.x) - g.fn(x)|` over every component of every output, where inputs and
    outputs transform as declared (see [`eqmlip.testing.assert_equivariant`][] for the
    declarations and defaults).

    **Arguments:**

    - `fn`, `*inputs`, `matrix`, `translation`, `in_actions`, `out_actions`: as for
        [`eqmlip.testing.assert_equivariant`][].

    **Returns:** the error, a Python float (`0.0` when the outputs are empty; NaN if an output
    is NaN).

    **Example:**

    ```python
    import e3nn_jax as e3nn
    import hypothesis
    import jax
    from eqmlip import testing

    cross = jax.jit(lambda x, y: e3nn.tensor_product(x, y, filter_ir_out=["1e"]))

    @testing.hypothesis_settings()
    @hypothesis.given(
        testing.irreps_arrays("1o"), testing.irreps_arrays("1o"), testing.o3_matrices()
    )
    def test_cross_product(x, y, matrix):
        assert testing.equivariance_error(cross, x, y, matrix=matrix) < 1e-4
    ```
    """
    comparisons = _compare(
        "equivariance_error", fn, inputs, matrix, translation, in_actions, out_actions
    )
    # np.max, unlike max(), propagates NaN.
    return float(np.max([np.max(c.abs_error(), initial=0.0) for c in comparisons], initial=0.0))


def _leaf_failure(c: _LeafComparison, atol: float, rtol: float) -> str | None:
    error = c.abs_error()
    allowed = atol + rtol * np.abs(c.expected)
    bad = ~(error <= allowed)  # NaN fails
    if not bad.any():
        return None
    excess = np.where(bad, np.nan_to_num(error - allowed, nan=np.inf), -np.inf)
    index = np.unravel_index(np.argmax(excess), excess.shape)
    idx = tuple(int(i) for i in index)
    component = c.action.component(idx) if c.action is not None else ""
    where = f"{idx} ({component})" if component else f"{idx}"
    return (
        f"  {c.name} ({c.description}): {int(bad.sum())} of {bad.size} components exceed the "
        f"tolerance; max |fn(g.x) - g.fn(x)| = {np.max(error, initial=0.0):.3g}. Worst at "
        f"index {where}: fn(g.x) = {c.actual[index]:.8g}, g.fn(x) = {c.expected[index]:.8g}, "
        f"error {error[index]:.3g} > atol + rtol*|g.fn(x)| = {atol:.3g} + {rtol:.3g}*"
        f"{abs(c.expected[index]):.3g} = {allowed[index]:.3g}."
    )


def _failures(comparisons: list, atol: Any, rtol: Any) -> list:
    failures = []
    for c in comparisons:
        leaf_atol = default_tolerance(c.dtype) if atol is None else float(atol)
        leaf_rtol = default_tolerance(c.dtype) if rtol is None else float(rtol)
        failure = _leaf_failure(c, leaf_atol, leaf_rtol)
        if failure is not None:
            failures.append(failure)
    return failures


def assert_equivariant(
    fn: Callable[..., Any],
    *inputs: Any,
    matrix: Matrix,
    translation: Translation | None = None,
    in_actions: Any = None,
    out_actions: Any = None,
    atol: float | int | None = None,
    rtol: float | int | None = None,
) -> None:
    """Assert that `fn(g.x) == g.fn(x)` for `g: x -> M x + t`, with `M = matrix` orthogonal
    and `t = translation` (zero by default).

    How each input and output transforms is **declared**, leaf by leaf or for whole subtrees:
    `in_actions` is a prefix pytree of the tuple `inputs`, `out_actions` one of `fn`'s output
    (as `in_axes` and `out_axes` of `jax.vmap`). A declaration is one of:

    | declaration | leaf | `g` acts by |
    |---|---|---|
    | `None` (default) | `IrrepsArray` | its irreps (`x.transform_by_matrix(M)`) |
    | `None` (default) | `eqmlip.Graph` | `pos -> M pos + t`, `cell -> cell M^T` |
    | irreps, e.g. `"1o"`, `"2x0e + 1e"` | array `(..., irreps.dim)` | those irreps |
    | `"vector"` | array `(..., 3)` | `v -> M v` (polar, as forces) |
    | `"positions"` | array `(..., 3)` | `p -> M p + t` |
    | `"cell"` | array `(..., 3, 3)`, rows | `C -> C M^T` |
    | `"tensor"` | array `(..., 3, 3)` | `T -> M T M^T` (stress) |
    | [`E3xLayout()`][eqmlip.testing.E3xLayout] | `(..., P, (L+1)**2, F)` | e3x's Wigner matrices |
    | `"invariant"` | anything | unchanged |

    Nothing is guessed: an input leaf without declaration that is not an `IrrepsArray` or a
    `Graph` (a module, a PRNG key, species) passes unchanged, and **the assertion raises
    `ValueError` if no input is transformed at all**; an output leaf that is a plain array
    **must** be declared (`TypeError` otherwise), since a plain `(n, 3)` array may be
    invariant or a vector. A `translation` needs some input declared `"positions"` (or a
    Graph).

    The action is computed on the host in float64 (it compiles nothing), `g.x` is rounded once
    to each input's dtype, and `fn(g.x)` is compared with `g.fn(x)` in float64, each component
    with `|fn(g.x) - g.fn(x)| <= atol + rtol * |g.fn(x)|` (as `numpy.allclose`). A float32
    `matrix` is snapped to the nearest orthogonal matrix. Float64 JAX inputs need
    `jax_enable_x64` on during the call (`ValueError` otherwise: JAX would silently compute in
    float32). `fn` is called twice, eagerly; pass a jitted function defined once outside the
    test, so that it compiles once for all examples. Use rotations and rotoinversions
    (`o3_matrices()`): only the latter detect wrong parities.

    The relative term is per component, so a component that is small by cancellation, such as
    a product of large float32 inputs, needs a larger `atol` or smaller inputs
    (`irreps_arrays(..., max_value=1.0)`).

    **Arguments:**

    - `fn`: the function to test, `fn(*inputs)`.
    - `*inputs`: its positional arguments.
    - `matrix`: a `(3, 3)` rotation `R` or rotoinversion `-R`.
    - `translation`: a `(3,)` shift applied to `"positions"` (inputs and outputs), or `None`.
    - `in_actions`, `out_actions`: the declarations (above); `None` everywhere by default.
    - `atol`, `rtol`: absolute and relative tolerances. `None` gives
        [`eqmlip.testing.default_tolerance`][] of each output's dtype (`1e-5` in float32,
        `1e-12` in float64).

    **Returns:** `None`.

    **Raises:** `AssertionError` naming each failing output (its pytree path, declaration,
    shape and dtype), the error, the tolerance, the worst component and the transformation;
    also when `fn(g.x)` and `fn(x)` differ in structure, irreps or shape. Under a rotoinversion
    whose rotation part passes, the message points at parities.

    **Example** (an e3nn-style function, then plain positions in and forces out):

    ```python
    import equinox as eqx
    import hypothesis
    import jax
    import jax.numpy as jnp
    import jax.random as jr
    import eqmlip
    from eqmlip import testing

    layer = eqmlip.nn.Linear("2x0e + 1o", "0e + 2x1o", key=jr.PRNGKey(0))
    apply = eqx.filter_jit(lambda layer, x: layer(x))

    @testing.hypothesis_settings()
    @hypothesis.given(testing.irreps_arrays("2x0e + 1o"), testing.o3_matrices())
    def test_linear_is_equivariant(x, matrix):
        testing.assert_equivariant(apply, layer, x, matrix=matrix)

    def energy(positions):  # a harmonic chain
        return jnp.sum((jnp.linalg.norm(positions[1:] - positions[:-1], axis=-1) - 1.0) ** 2)

    energy_and_forces = jax.jit(lambda p: (energy(p), -jax.grad(energy)(p)))

    @testing.hypothesis_settings()
    @hypothesis.given(testing.o3_matrices())
    def test_forces_rotate(matrix):
        positions = jnp.array([[0.0, 0.0, 0.0], [1.1, 0.2, 0.0], [1.5, 1.0, 0.3]])
        testing.assert_equivariant(
            energy_and_forces,
            positions,
            matrix=matrix,
            translation=jnp.array([0.5, -2.0, 1.0]),
            in_actions="positions",
            out_actions=("invariant", "vector"),
        )
    ```
    """
    comparisons = _compare(
        "assert_equivariant", fn, inputs, matrix, translation, in_actions, out_actions
    )
    failures = _failures(comparisons, atol, rtol)
    if not failures:
        return
    m = np.asarray(matrix, dtype=np.float64)
    det = float(np.linalg.det(m))
    kind = "rotation" if det > 0 else "rotoinversion"
    transformation = np.array2string(m, precision=6, separator=", ").replace("\n", "")
    if translation is not None:
        shift = np.array2string(np.asarray(translation, np.float64), precision=6, separator=", ")
        transformation += f", translation t = {shift}"
    message = [
        f"assert_equivariant: fn is not equivariant under a {kind} (det {det:+.0f}): "
        f"{len(failures)} of {len(comparisons)} output leaves differ.",
        *failures,
        f"  The transformation: M = {transformation}.",
    ]
    if det < 0:
        # The parity hint only when the rotation part alone passes: then the inversion is to blame.
        rotation = _compare(
            "assert_equivariant", fn, inputs, -m, translation, in_actions, out_actions
        )
        if not _failures(rotation, atol, rtol):
            message.append(
                "  The rotation part -M alone passes, so only the inversion fails: check the "
                "parities (e/o) of the irreps (inputs, outputs, e3x parity channels)."
            )
        else:
            message.append("  The rotation part -M alone fails too (not a parity error).")
    raise AssertionError("\n".join(message))
