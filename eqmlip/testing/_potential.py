"""The symmetries of an interatomic potential: O(3), translations, permutations, periodic images
and supercells, checked on energy, forces and stress."""

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ase
import numpy as np
from jaxtyping import Bool, Float, Int

from ._checks import _check_matrix, _check_translation, default_tolerance
from ._structures import full_repr, pad_to_bucket

PotentialFn = Callable[..., Any]
Tolerance = float | int | Mapping[str, float] | None
_OUTPUTS = ("energy", "forces", "stress")


@dataclasses.dataclass(frozen=True)
class _Structure:
    positions: Float[np.ndarray, "n 3"]
    numbers: Int[np.ndarray, " n"]
    cell: Float[np.ndarray, "3 3"]
    pbc: Bool[np.ndarray, "3"]


@dataclasses.dataclass(frozen=True)
class _Outputs:
    energy: Float[np.ndarray, ""]
    forces: Float[np.ndarray, "n 3"]
    stress: Float[np.ndarray, "3 3"] | None
    dtypes: dict


def _evaluate(fn: PotentialFn, s: _Structure) -> _Outputs:
    out = fn(s.positions, s.numbers, s.cell, s.pbc)
    if all(hasattr(out, name) for name in ("energy", "forces")):
        values = [out.energy, out.forces, getattr(out, "stress", None)]
    elif isinstance(out, tuple | list) and len(out) in (2, 3):
        values = [*out, None][:3]
    else:
        raise TypeError(
            "assert_potential_symmetries: fn must return (energy, forces) or (energy, forces, "
            f"stress), or an object with those attributes; got {type(out).__name__}."
        )
    n = len(s.numbers)
    energy, forces, stress = (None if v is None else np.asarray(v) for v in values)
    shapes = {"energy": (), "forces": (n, 3), "stress": (3, 3)}
    # Accept one-structure batches ([1], [1, 3, 3]) as eqmlip's `predict` returns them.
    if energy is not None and energy.shape == (1,):
        energy = energy[0]
    if stress is not None and stress.shape == (1, 3, 3):
        stress = stress[0]
    for name, value in zip(_OUTPUTS, (energy, forces, stress), strict=True):
        if name != "stress" and value is None:
            raise TypeError(f"assert_potential_symmetries: fn returned no {name}.")
        if value is not None and value.shape != shapes[name]:
            raise ValueError(
                f"assert_potential_symmetries: fn's {name} has shape {value.shape}; expected "
                f"{shapes[name]} for a structure of {n} atoms."
            )
    assert energy is not None and forces is not None
    dtypes = {
        k: v.dtype for k, v in zip(_OUTPUTS, (energy, forces, stress), strict=True) if v is not None
    }
    as64 = lambda v: None if v is None else np.asarray(v, np.float64)  # noqa: E731
    return _Outputs(as64(energy), as64(forces), as64(stress), dtypes)  # type: ignore[arg-type]


def _tolerance(tol: Tolerance, name: str, dtype: np.dtype) -> float:
    if tol is None:
        return default_tolerance(dtype)
    if isinstance(tol, Mapping):
        return float(tol[name]) if name in tol else default_tolerance(dtype)
    return float(tol)


def _check(
    symmetry: str,
    transformation: str,
    actual: _Outputs,
    expected: _Outputs,
    atol: Tolerance,
    rtol: Tolerance,
) -> str | None:
    lines = []
    for name in _OUTPUTS:
        a, b = getattr(actual, name), getattr(expected, name)
        if (a is None) != (b is None):
            lines.append(f"  {name}: returned for one structure and not the other.")
            continue
        if a is None:
            continue
        dtype = actual.dtypes[name]
        at, rt = _tolerance(atol, name, dtype), _tolerance(rtol, name, dtype)
        scale = float(np.max(np.abs(b), initial=0.0))
        error = np.abs(a - b)
        allowed = at + rt * scale
        worst = float(np.max(error, initial=0.0))
        if not (np.all(np.isfinite(a)) and worst <= allowed):
            index = np.unravel_index(np.argmax(np.nan_to_num(error, nan=np.inf)), error.shape)
            idx = tuple(int(i) for i in index)
            where = {
                "energy": "",
                "forces": f" (atom {idx[0]}, {_AXES[idx[-1]]})" if idx else "",
                "stress": f" ({_AXES[idx[0]]}{_AXES[idx[-1]]})" if idx else "",
            }[name]
            lines.append(
                f"  {name} ({dtype}): max error {worst:.3g} > atol + rtol * max|expected| = "
                f"{at:.3g} + {rt:.3g} * {scale:.3g} = {allowed:.3g}; worst at index {idx}{where}: "
                f"got {a[index]:.8g}, expected {b[index]:.8g}."
            )
    if not lines:
        return None
    return "\n".join([f"{symmetry} ({transformation}):", *lines])


# Central differences of fourth order: error h^4 f^(5) / 30 from truncation and about
# 1.5 eps |E| / h from rounding. Measured on NequIP and a pair potential (stresses down to 1e-5
# eV/A^3), these steps leave both 100 times below the default tolerance; 1e-3 in float64 did not
# (the truncation error does not shrink with the stress), nor did 1e-2 in float32 (pairs cross
# the cutoff).
_STRAIN_STEPS = {8: 1e-4, 4: 3e-3}
_STENCIL = ((-2.0, 1.0 / 12.0), (-1.0, -8.0 / 12.0), (1.0, 8.0 / 12.0), (2.0, -1.0 / 12.0))
_AXES = "xyz"


def _strain_tolerance(dtype: Any, energy: float, volume: float, step: float) -> tuple[float, float]:
    """The default `(atol, rtol)` of the stress check against finite differences.

    `atol` covers the rounding of the energies in the stencil (about `100 eps (1 + |E|) /
    (step V)`, in eV/Å^3) and `rtol` the truncation error: `1e-2` in float32 and narrower,
    `1e-6` in float64.
    """
    eps = float(np.finfo(np.dtype(dtype)).eps) if np.dtype(dtype).kind == "f" else 0.0
    rtol = 1e-6 if eps <= float(np.finfo(np.float64).eps) else 1e-2
    return 100.0 * eps * (1.0 + abs(energy)) / (step * volume), rtol


def _strain_option(tol: Tolerance, default: float) -> float:
    # Only a mapping's "strain" entry overrides the finite-difference default: a plain number is
    # sized for the exact comparisons of the other checks.
    if isinstance(tol, Mapping) and "strain" in tol:
        return float(tol["strain"])
    return default


def _strained(s: _Structure, a: int, b: int, h: float) -> _Structure:
    # The symmetric strain eps_ab = eps_ba = h (h / 2 each off the diagonal): dE/dh = V sigma_ab
    # for a symmetric stress sigma = (1/V) dE/d(eps), eqmlip's and ASE's sign convention.
    eps = np.zeros((3, 3))
    eps[a, b] += 0.5 * h
    eps[b, a] += 0.5 * h
    deform = np.eye(3) + eps
    return dataclasses.replace(s, positions=s.positions @ deform, cell=s.cell @ deform)


def _check_strain(
    fn: PotentialFn,
    s: _Structure,
    reference: _Outputs,
    step: float | None,
    atol: Tolerance,
    rtol: Tolerance,
) -> str | None:
    """Compare the returned stress with the strain derivative of the energy over the volume."""
    caller = "assert_potential_symmetries"
    if not s.pbc.any():
        raise ValueError(
            f"{caller}: strain=True needs a periodic structure (some pbc True), got pbc "
            f"{_fmt(s.pbc)}; pass strain=bool(atoms.pbc.any()) when drawing molecules too."
        )
    if reference.stress is None:
        raise ValueError(
            f"{caller}: strain=True needs fn to return a stress, but it returned None."
        )
    volume = abs(float(np.linalg.det(s.cell)))
    if not volume > 0:
        raise ValueError(f"{caller}: strain=True needs a cell of positive volume, got {volume}.")
    dtype = max(
        (np.dtype(reference.dtypes[k]) for k in ("energy", "stress")),
        key=lambda d: np.finfo(d).eps if d.kind == "f" else 0.0,
    )  # the coarser of the two
    h = float(step) if step is not None else _STRAIN_STEPS.get(dtype.itemsize, 1e-2)
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"{caller}: strain_step must be positive and finite, got {step}.")
    default_atol, default_rtol = _strain_tolerance(dtype, float(reference.energy), volume, h)
    at, rt = _strain_option(atol, default_atol), _strain_option(rtol, default_rtol)
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(a, 3):
            derivative = sum(
                w * float(_evaluate(fn, _strained(s, a, b, k * h)).energy) for k, w in _STENCIL
            )
            fd[a, b] = fd[b, a] = derivative / (h * volume)
    got = reference.stress
    allowed = at + rt * float(np.max(np.abs(fd)))
    error = np.abs(got - fd)
    bad = [(a, b) for a in range(3) for b in range(3) if not error[a, b] <= allowed]
    if not bad:
        return None
    lines = [
        f"strain (central differences of the energy, step h = {h:.3g}, volume V = {volume:.6g}):",
        f"  stress ({reference.dtypes['stress']}) is not (1/V) dE/d(strain): {len(bad)} of 9 "
        f"components differ by more than atol + rtol * max|dE/d(strain)|/V = {at:.3g} + "
        f"{rt:.3g} * {float(np.max(np.abs(fd))):.3g} = {allowed:.3g}.",
    ]
    for a, b in sorted(bad, key=lambda ab: -np.nan_to_num(error[ab], nan=np.inf)):
        lines.append(
            f"  stress[{a}, {b}] ({_AXES[a]}{_AXES[b]}): returned {got[a, b]:.8g}, finite "
            f"difference {fd[a, b]:.8g}, error {error[a, b]:.3g}."
        )
    hint = _strain_hint(got, fd, volume, allowed)
    if hint:
        lines.append(f"  {hint}")
    return "\n".join(lines)


def _strain_hint(got: np.ndarray, fd: np.ndarray, volume: float, allowed: float) -> str | None:
    if np.max(np.abs(got + fd)) <= allowed:
        return (
            "The returned stress is minus the derivative: eqmlip's (and ASE's) sign is sigma = "
            "(1/V) dE/d(strain) = -virial / V, positive under tension."
        )
    if np.max(np.abs(got - volume * fd)) <= allowed * volume:
        return "The returned stress is V times the derivative: divide the virial by the volume."
    if np.max(np.abs(got - got.T)) > allowed:
        return "The returned stress is not symmetric (a strain derivative of E(r) is)."
    return None


def _structure(atoms: ase.Atoms) -> _Structure:
    if not isinstance(atoms, ase.Atoms):
        raise TypeError(
            "assert_potential_symmetries: structure must be an ase.Atoms, got "
            f"{type(atoms).__name__}."
        )
    return _Structure(
        positions=np.array(atoms.positions, dtype=np.float64),
        numbers=np.array(atoms.numbers, dtype=np.int64),
        cell=np.array(atoms.cell.array, dtype=np.float64),
        pbc=np.array(atoms.pbc, dtype=bool),
    )


def _fmt(x: Any) -> str:
    return np.array2string(np.asarray(x), precision=6, separator=", ").replace("\n", "")


def assert_potential_symmetries(
    fn: PotentialFn,
    structure: ase.Atoms,
    *,
    matrix: Any = None,
    translation: Any = None,
    permutation: Sequence[int] | np.ndarray | None = None,
    lattice_shifts: Any = None,
    supercell: Sequence[int] | None = None,
    strain: bool = False,
    strain_step: float | None = None,
    atol: Tolerance = None,
    rtol: Tolerance = None,
) -> None:
    """Assert that a potential respects the symmetries of physics on one structure.

    `fn(positions, numbers, cell, pbc)` takes NumPy arrays (float64 positions `(n, 3)`,
    integer atomic numbers `(n,)`, cell `(3, 3)` with lattice vectors as rows (zeros for a
    molecule), boolean `pbc` `(3,)`) and returns `(energy, forces)` or `(energy, forces,
    stress)` (arrays of shapes `()`, `(n, 3)`, `(3, 3)`; `stress` may be `None`), or an object
    with those attributes (one-structure batches `[1]`, `[1, 3, 3]` are accepted). Each group
    element given is checked against `fn(structure)`:

    | argument | structure becomes | expected outputs |
    |---|---|---|
    | `matrix` `M` (O(3)) | `r -> M r`, cell rows `-> M a` | `E`, `F M^T`, `M S M^T` |
    | `translation` `t` | `r -> r + t` | unchanged |
    | `permutation` `P` (atom order) | `r, Z -> r[P], Z[P]` | `E`, `F[P]`, `S` |
    | `lattice_shifts` `N` (integers `(n, 3)`) | `r_i -> r_i + N_i C` (images) | unchanged |
    | `supercell` `(k1, k2, k3)` | `structure.repeat((k1, k2, k3))` | `k E`, `F` tiled, `S` |

    `lattice_shifts` and `supercell` need a periodic structure and may only be non-trivial along
    periodic directions. Outputs are compared in float64 with `|got - expected| <= atol + rtol *
    max|expected|` per output (the scale of the output, not of each component: a force
    component that is small by cancellation is not held to a tighter bound).

    With `strain=True` (periodic structures), the stress must be the derivative of the energy
    under a homogeneous strain, over the volume: with `r -> r (1 + eps)` and `C -> C (1 + eps)`
    (rows), `eps` symmetric,

    $$\\sigma_{ab} = \\frac{1}{V} \\frac{\\partial E}{\\partial \\varepsilon_{ab}}
      = -\\frac{W_{ab}}{V}$$

    in eV/Å³ (eqmlip's and ASE's sign, positive under tension; `W` is the virial). Each of the
    six components is a fourth-order central difference of `fn`'s energy (four strained
    structures each, step `h`) computed in float64 on the host, from energies in `fn`'s own
    precision: use x64 for a tight check. The tolerance is `atol + rtol * max|FD|` with
    `rtol = 1e-2` (float32) or `1e-6` (float64) and `atol = 100 eps (1 + |E|) / (h V)` (the
    rounding of the energies); `h = 3e-3` (float32) or `1e-4` (float64). This catches a
    stress of the wrong sign, a virial not divided by the volume, a non-symmetric stress or
    one component scaled, none of which the other checks see (they all rotate as tensors).

    **Arguments:**

    - `fn`: the potential, as above. Wrap an eqmlip model with
        [`eqmlip.testing.potential_function`][]. Jit its core once outside the test.
    - `structure`: an `ase.Atoms` (e.g. drawn by [`eqmlip.testing.molecules`][] or
        [`eqmlip.testing.crystals`][]).
    - `matrix`, `translation`, `permutation`, `lattice_shifts`, `supercell`: the group elements
        to check (at least one of them or `strain`; `None` skips that check).
    - `strain`: check the stress against finite differences of the energy (above); needs a
        periodic structure of positive volume and a returned stress (`ValueError` otherwise:
        pass `strain=bool(atoms.pbc.any())` when drawing molecules and crystals).
    - `strain_step`: the step `h` of the finite differences; `None` for the default above.
    - `atol`, `rtol`: tolerances, a number or a mapping from `"energy"`, `"forces"`, `"stress"`
        to a number; `None` (or a missing name) gives
        [`eqmlip.testing.default_tolerance`][] of that output's dtype. The strain check takes
        only a mapping's `"strain"` entry (a plain number is sized for the exact comparisons).

    **Returns:** `None`.

    **Raises:** `AssertionError` naming each broken symmetry, output, error, tolerance, worst
    component and the transformation (for the strain check: each failing stress component, the
    returned value, the finite difference, the step and volume); `ValueError` if no group
    element is given or one does not fit the structure.

    **Example** (a pair potential written by hand):

    ```python
    import hypothesis
    import hypothesis.strategies as st
    import jax
    import jax.numpy as jnp
    import numpy as np
    from eqmlip import testing


    def energy(positions):
        d = positions[:, None] - positions[None]
        r2 = jnp.sum(d**2, axis=-1) + jnp.eye(len(positions))  # no self-pair
        return 0.5 * jnp.sum((1 - jnp.eye(len(positions))) / r2**3)


    energy_and_forces = jax.jit(lambda p: (energy(p), -jax.grad(energy)(p)))


    def potential(positions, numbers, cell, pbc):
        return energy_and_forces(jnp.asarray(positions, jnp.float32))


    @testing.hypothesis_settings()
    @hypothesis.given(
        atoms=testing.molecules(min_atoms=4, max_atoms=4),
        matrix=testing.o3_matrices(),
        order=st.permutations(range(4)),
    )
    def test_pair_potential(atoms, matrix, order):
        testing.assert_potential_symmetries(
            potential,
            atoms,
            matrix=matrix,
            translation=np.array([1.0, -2.0, 0.5]),
            permutation=order,
        )
    ```
    """
    caller = "assert_potential_symmetries"
    s = _structure(structure)
    n = len(s.numbers)
    given = [matrix, translation, permutation, lattice_shifts, supercell]
    if all(x is None for x in given) and not strain:
        raise ValueError(
            f"{caller}: no group element given, so nothing would be checked; pass matrix, "
            "translation, permutation, lattice_shifts, supercell and/or strain=True."
        )
    reference = _evaluate(fn, s)
    failures = []

    def check(symmetry: str, transformation: str, moved: _Structure, expected: _Outputs) -> None:
        failure = _check(symmetry, transformation, _evaluate(fn, moved), expected, atol, rtol)
        if failure is not None:
            failures.append(failure)

    if matrix is not None:
        m = _check_matrix(caller, matrix)
        kind = "rotation" if np.linalg.det(m) > 0 else "rotoinversion"
        moved = dataclasses.replace(s, positions=s.positions @ m.T, cell=s.cell @ m.T)
        stress = None if reference.stress is None else m @ reference.stress @ m.T
        expected = dataclasses.replace(reference, forces=reference.forces @ m.T, stress=stress)
        check(kind, f"M = {_fmt(m)}", moved, expected)
    if translation is not None:
        t = _check_translation(caller, translation)
        check("translation", f"t = {_fmt(t)}", dataclasses.replace(s, positions=s.positions + t),
              reference)  # fmt: skip
    if permutation is not None:
        order = np.asarray(permutation)
        if order.shape != (n,) or sorted(order.tolist()) != list(range(n)):
            raise ValueError(
                f"{caller}: permutation must be a permutation of range({n}), got {_fmt(order)}."
            )
        moved = dataclasses.replace(s, positions=s.positions[order], numbers=s.numbers[order])
        expected = dataclasses.replace(reference, forces=reference.forces[order])
        check("permutation", f"atom order {_fmt(order)}", moved, expected)
    if lattice_shifts is not None:
        shifts = np.asarray(lattice_shifts)
        if shifts.shape != (n, 3) or shifts.dtype.kind not in "iu":
            raise ValueError(
                f"{caller}: lattice_shifts must be integers of shape ({n}, 3), got shape "
                f"{shifts.shape} and dtype {shifts.dtype}."
            )
        if np.any(shifts[:, ~s.pbc] != 0):
            raise ValueError(
                f"{caller}: lattice_shifts move atoms along a non-periodic direction (pbc "
                f"{_fmt(s.pbc)}), which is not a symmetry."
            )
        moved = dataclasses.replace(s, positions=s.positions + shifts @ s.cell)
        check("lattice shift", f"N = {_fmt(shifts)}", moved, reference)
    if supercell is not None:
        reps = tuple(int(k) for k in supercell)
        if (
            len(reps) != 3
            or min(reps) < 1
            or any(k > 1 for k, p in zip(reps, s.pbc, strict=True) if not p)
        ):
            raise ValueError(
                f"{caller}: supercell must be 3 positive integers, > 1 only along periodic "
                f"directions (pbc {_fmt(s.pbc)}), got {supercell}."
            )
        big = _structure(structure.repeat(reps))
        k = math.prod(reps)
        expected = dataclasses.replace(
            reference,
            energy=np.asarray(k * reference.energy),
            forces=np.tile(reference.forces, (k, 1)),
        )
        check("supercell", f"repeat {reps}", big, expected)
    if strain:
        failure = _check_strain(fn, s, reference, strain_step, atol, rtol)
        if failure is not None:
            failures.append(failure)
    if failures:
        raise AssertionError(
            f"{caller}: the potential breaks {len(failures)} symmetr"
            f"{'y' if len(failures) == 1 else 'ies'} on {full_repr(structure)}:\n"
            + "\n".join(failures)
        )


def potential_function(model: Any, *, node_multiple: int = 8, edge_multiple: int = 64) -> Any:
    """Wrap an eqmlip potential as `fn(positions, numbers, cell, pbc) -> (E, F, S)` for
    [`eqmlip.testing.assert_potential_symmetries`][].

    Builds the structure's [`eqmlip.Graph`][] (neighbour list on the host, with the model's
    cutoff), pads it to sizes rounded up to powers of two times `node_multiple` and
    `edge_multiple` (so that structures of similar sizes share one compilation) and calls a
    jitted [`eqmlip.potential.predict`][]. Positions are in JAX's default precision (float64
    under `jax_enable_x64`).

    **Arguments:**

    - `model`: any registered [`eqmlip.models.AbstractPotential`][].
    - `node_multiple`, `edge_multiple`: the smallest padded sizes.

    **Returns:** the function; its stress is that of `predict` (zeros for molecules).
    """
    # Imported here: `import eqmlip.testing` stays free of the potential machinery.
    import equinox as eqx

    from ..graph import Graph
    from ..models import AbstractPotential
    from ..potential import predict

    if not isinstance(model, AbstractPotential):
        raise TypeError(
            "potential_function: model must be an eqmlip.models.AbstractPotential, got "
            f"{type(model).__name__}."
        )
    jitted = eqx.filter_jit(predict)

    def fn(positions: Any, numbers: Any, cell: Any, pbc: Any) -> tuple:
        atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        graph = Graph.from_atoms(atoms, float(model.cutoff))
        out = jitted(model, pad_to_bucket(graph, node_multiple, edge_multiple))
        stress = None if out.stress is None else out.stress[0]
        return out.energy[0], out.forces[: len(atoms)] if out.forces is not None else None, stress

    return fn
