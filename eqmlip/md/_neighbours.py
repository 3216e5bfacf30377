"""Neighbour lists built and updated on the device, inside a jitted MD loop.

Two lists, both of fixed capacity (a static shape per compiled loop):

- a **Verlet (candidate) list**: every directed pair `i -> j` with a periodic image `S` such
  that `|x_j - x_i + S C| < cutoff + skin`, found by an all-pairs search over the images the
  cell needs (`O(nodes^2 images)`, run only when atoms have moved far enough);
- the **edges** of one step: the candidates within `cutoff` now, compacted into the graph's
  edge arrays, padding edges being self-loops on the padding node (the `eqmlip.Graph`
  convention).

Positions are never wrapped: the search wraps copies into the cell and converts each shift
back, so a candidate's shift is the one that applies to the unwrapped positions (which an MD
trajectory keeps, as ASE does). A count beyond a capacity, or a cell that needs more images
than were compiled, sets `overflow`; the host driver then re-allocates and redoes the chunk,
so a list is never silently truncated.
"""

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .._errors import InputError


class NeighbourSpec(NamedTuple):
    """Static sizes of an on-device neighbour list (one compiled loop per spec).

    - `cutoff`: the model's edge cutoff (Å).
    - `skin`: the Verlet buffer (Å): the candidate list holds pairs within `cutoff + skin`
        and is rebuilt once atoms may have moved a pair across `cutoff` from outside it.
    - `pbc`: periodicity along each lattice vector.
    - `images`: how many periodic images to search along each lattice vector (0 where not
        periodic).
    - `candidate_capacity`, `edge_capacity`: sizes of the candidate list and of the edges.
    """

    cutoff: float
    skin: float
    pbc: tuple[bool, bool, bool]
    images: tuple[int, int, int]
    candidate_capacity: int
    edge_capacity: int

    @property
    def radius(self) -> float:
        return self.cutoff + self.skin


class NeighbourList(eqx.Module):
    """A Verlet list on the device (see the module docstring).

    - `senders`, `receivers`: `[capacity]` atom indices; entries past `count` are unused.
    - `shifts`: `[capacity, 3]` integer cell shifts for the unwrapped positions.
    - `count`: the number of candidates found (may exceed the capacity: then `overflow`).
    - `reference_positions`, `reference_cell`: the geometry the list was built from.
    - `overflow`: a capacity or the image range was too small since the last re-allocation.
    """

    senders: Int[Array, " capacity"]
    receivers: Int[Array, " capacity"]
    shifts: Int[Array, "capacity 3"]
    count: Int[Array, ""]
    reference_positions: Float[Array, "nodes 3"]
    reference_cell: Float[Array, "3 3"]
    overflow: Bool[Array, ""]


def _plane_spacings(cell: Float[Array, "3 3"]) -> Float[Array, " 3"]:
    """Distance between neighbouring lattice planes spanned by each pair of other vectors."""
    volume = jnp.abs(jnp.linalg.det(cell))
    areas = jnp.linalg.norm(
        jnp.stack(
            [
                jnp.cross(cell[1], cell[2]),
                jnp.cross(cell[2], cell[0]),
                jnp.cross(cell[0], cell[1]),
            ]
        ),
        axis=-1,
    )
    return volume / areas


def _full_cell(cell: Float[Array, "3 3"], pbc: tuple[bool, bool, bool]) -> Float[Array, "3 3"]:
    """The cell with each non-periodic vector replaced by a unit vector orthogonal to the
    periodic ones, so that it is invertible (shifts along those directions are always 0, so
    their length and sign do not matter)."""
    periodic = [k for k in range(3) if pbc[k]]
    rows = [cell[k] for k in range(3)]
    if len(periodic) == 3:
        return cell
    if len(periodic) == 0:
        return jnp.eye(3, dtype=cell.dtype)
    if len(periodic) == 2:
        normal = jnp.cross(cell[periodic[0]], cell[periodic[1]])
        (free,) = [k for k in range(3) if not pbc[k]]
        rows[free] = normal / jnp.linalg.norm(normal)
        return jnp.stack(rows)
    (axis,) = periodic
    a = cell[axis] / jnp.linalg.norm(cell[axis])
    # The coordinate axis least aligned with `a` gives a well-conditioned orthogonal pair.
    helper = jnp.eye(3, dtype=cell.dtype)[jnp.argmin(jnp.abs(a))]
    u = jnp.cross(a, helper)
    u = u / jnp.linalg.norm(u)
    v = jnp.cross(a, u)
    free = [k for k in range(3) if not pbc[k]]
    rows[free[0]], rows[free[1]] = u, v
    return jnp.stack(rows)


# Radii within 1e-5 (relative) of a plane spacing do not ask for one more image: a pair that
# close to `cutoff + skin` cannot come within `cutoff` before the next rebuild, and the host
# (float64) and the device (float32) then agree on the count.
_IMAGE_TOLERANCE = 1e-5


def required_images(
    cell: Float[Array, "3 3"], pbc: tuple[bool, bool, bool], radius: float
) -> Int[Array, " 3"]:
    """Images to search along each lattice vector so that every pair within `radius` is
    found for positions wrapped into the cell: `ceil(radius / plane spacing)` (0 if not
    periodic)."""
    spacing = _plane_spacings(_full_cell(cell, pbc))
    images = jnp.ceil(radius * (1.0 - _IMAGE_TOLERANCE) / spacing).astype(jnp.int32)
    return jnp.where(jnp.asarray(pbc), images, 0)


def host_images(
    cell: Float[np.ndarray, "3 3"], pbc: tuple[bool, bool, bool], radius: float
) -> tuple[int, int, int]:
    """[`required_images`][] on the host, in float64 (for allocating a spec)."""
    from ..graph import _complement_basis

    cell = np.asarray(cell, np.float64)
    periodic = np.asarray(pbc, bool)
    full = cell.copy()
    full[~periodic] = _complement_basis(cell[periodic])
    volume = abs(np.linalg.det(full))
    areas = np.linalg.norm(np.cross(full[[1, 2, 0]], full[[2, 0, 1]]), axis=-1)
    images = np.ceil(radius * (1.0 - _IMAGE_TOLERANCE) * areas / volume).astype(int)
    images = np.where(periodic, images, 0)
    return (int(images[0]), int(images[1]), int(images[2]))


def _wrap(
    positions: Float[Array, "nodes 3"], cell: Float[Array, "3 3"], pbc: tuple[bool, bool, bool]
) -> tuple[Float[Array, "nodes 3"], Int[Array, "nodes 3"]]:
    """Positions wrapped into the cell along periodic directions, and the integer offsets
    `k` with `positions = wrapped + k @ cell`."""
    full = _full_cell(cell, pbc)
    fractional = jnp.linalg.solve(full.T, positions.T).T
    offsets = jnp.where(jnp.asarray(pbc), jnp.floor(fractional), 0.0)
    return positions - offsets @ cell, offsets.astype(jnp.int32)


def _shift_table(images: tuple[int, int, int]) -> np.ndarray:
    ranges = [np.arange(-n, n + 1) for n in images]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3).astype(np.int32)


def build(
    positions: Float[Array, "nodes 3"], cell: Float[Array, "3 3"], spec: NeighbourSpec
) -> NeighbourList:
    """Search every pair and image for candidates within `spec.radius` (jittable).

    Sorted by sender, receiver, then shift, like [`eqmlip.graph.neighbour_list`][]. Sets
    `overflow` if more candidates than `spec.candidate_capacity` exist or the cell needs more
    images than `spec.images`.
    """
    nodes = positions.shape[0]
    dtype = positions.dtype
    capacity = spec.candidate_capacity
    wrapped, offsets = _wrap(positions, cell, spec.pbc)
    table = _shift_table(spec.images)
    num_shifts = len(table)
    shift_vectors = jnp.asarray(table, dtype) @ cell
    radius2 = jnp.asarray(spec.radius, dtype) ** 2
    zero_shift = jnp.asarray(np.all(table == 0, axis=-1))

    # Rows of senders per block: bounds the [block, nodes, shifts, 3] temporary (~4M floats).
    block = max(1, min(nodes, (1 << 22) // max(1, 3 * nodes * num_shifts)))
    num_blocks = -(-nodes // block)
    per_block = block * nodes * num_shifts
    found = min(capacity, per_block)

    def search(carry, start):
        senders, receivers, shifts, count = carry
        rows = start + jnp.arange(block, dtype=jnp.int32)
        valid_rows = rows < nodes
        rows = jnp.where(valid_rows, rows, 0)
        vectors = (
            wrapped[None, :, None, :] - wrapped[rows][:, None, None, :] + shift_vectors[None, None]
        )
        within = jnp.sum(vectors**2, axis=-1) < radius2
        self_pair = (rows[:, None] == jnp.arange(nodes, dtype=jnp.int32)[None, :])[
            :, :, None
        ] & zero_shift
        within = within & ~self_pair & valid_rows[:, None, None]
        (flat,) = jnp.nonzero(within.reshape(-1), size=found, fill_value=0)
        flat = flat.astype(jnp.int32)
        block_count = jnp.sum(within, dtype=jnp.int32)
        row, rest = jnp.divmod(flat, nodes * num_shifts)
        column, image = jnp.divmod(rest, num_shifts)
        sender, receiver = rows[row], column
        shift = jnp.asarray(table)[image] - offsets[receiver] + offsets[sender]
        slots = count + jnp.arange(found, dtype=jnp.int32)
        slots = jnp.where(
            jnp.arange(found, dtype=jnp.int32) < block_count, slots, capacity
        )  # dropped
        senders = senders.at[slots].set(sender.astype(jnp.int32), mode="drop")
        receivers = receivers.at[slots].set(receiver.astype(jnp.int32), mode="drop")
        shifts = shifts.at[slots].set(shift.astype(jnp.int32), mode="drop")
        return (senders, receivers, shifts, count + block_count), None

    initial = (
        jnp.zeros(capacity, jnp.int32),
        jnp.zeros(capacity, jnp.int32),
        jnp.zeros((capacity, 3), jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    (senders, receivers, shifts, count), _ = jax.lax.scan(
        search, initial, jnp.arange(num_blocks, dtype=jnp.int32) * block
    )
    too_few_images = jnp.any(
        required_images(cell, spec.pbc, spec.radius) > jnp.asarray(spec.images, jnp.int32)
    )
    return NeighbourList(
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        count=count,
        reference_positions=positions,
        reference_cell=cell,
        overflow=(count > capacity) | too_few_images,
    )


def needs_rebuild(
    neighbours: NeighbourList,
    positions: Float[Array, "nodes 3"],
    cell: Float[Array, "3 3"],
    spec: NeighbourSpec,
) -> Bool[Array, ""]:
    """Whether a pair outside the candidate list may now be within `cutoff`.

    With `T = C_ref^-1 C` (the identity unless the cell changed, which only a fully periodic
    cell may do), a pair that was at least `cutoff + skin` apart is now at least
    `s_min(T) (cutoff + skin - 2 max_i |x_i T^-1 - x_ref_i|)` apart, `s_min` the smallest
    singular value: rebuild when that bound reaches `cutoff`.
    """
    reference = neighbours.reference_positions
    if all(spec.pbc):
        transform = jnp.linalg.solve(neighbours.reference_cell, cell)
        back = jnp.linalg.solve(transform.T, positions.T).T  # x T^-1
        stretch = jnp.linalg.svd(transform, compute_uv=False)[-1]
    else:
        back, stretch = positions, jnp.ones((), positions.dtype)
    displacement = jnp.sqrt(jnp.max(jnp.sum((back - reference) ** 2, axis=-1), initial=0.0))
    return stretch * (spec.radius - 2.0 * displacement) <= spec.cutoff


def update(
    neighbours: NeighbourList,
    positions: Float[Array, "nodes 3"],
    cell: Float[Array, "3 3"],
    spec: NeighbourSpec,
) -> NeighbourList:
    """The list, rebuilt if [`needs_rebuild`][] (overflow flags are kept until the host sees
    them)."""
    rebuilt = jax.lax.cond(
        needs_rebuild(neighbours, positions, cell, spec),
        lambda: build(positions, cell, spec),
        lambda: neighbours,
    )
    return eqx.tree_at(lambda n: n.overflow, rebuilt, rebuilt.overflow | neighbours.overflow)


class Edges(NamedTuple):
    senders: Int[Array, " edges"]
    receivers: Int[Array, " edges"]
    shifts: Int[Array, "edges 3"]
    count: Int[Array, ""]
    overflow: Bool[Array, ""]


def edges(
    neighbours: NeighbourList,
    positions: Float[Array, "nodes 3"],
    cell: Float[Array, "3 3"],
    spec: NeighbourSpec,
) -> Edges:
    """The candidates within `cutoff` now, compacted to `spec.edge_capacity` entries.

    Padding edges are self-loops on node `nodes` (the padding node the caller appends) with
    shift 0. `overflow` is set if more edges exist than the capacity.
    """
    nodes = positions.shape[0]
    capacity = spec.edge_capacity
    valid = jnp.arange(spec.candidate_capacity, dtype=jnp.int32) < neighbours.count
    vectors = (
        positions[neighbours.receivers]
        - positions[neighbours.senders]
        + neighbours.shifts.astype(positions.dtype) @ cell
    )
    within = valid & (jnp.sum(vectors**2, axis=-1) < jnp.asarray(spec.cutoff, positions.dtype) ** 2)
    count = jnp.sum(within, dtype=jnp.int32)
    (chosen,) = jnp.nonzero(within, size=capacity, fill_value=0)
    chosen = chosen.astype(jnp.int32)
    real = jnp.arange(capacity, dtype=jnp.int32) < count
    return Edges(
        senders=jnp.where(real, neighbours.senders[chosen], jnp.int32(nodes)),
        receivers=jnp.where(real, neighbours.receivers[chosen], jnp.int32(nodes)),
        shifts=jnp.where(real[:, None], neighbours.shifts[chosen], 0),
        count=count,
        overflow=count > capacity,
    )


def allocate(
    positions: Float[np.ndarray, "nodes 3"],
    cell: Float[np.ndarray, "3 3"],
    pbc: tuple[bool, bool, bool],
    cutoff: float,
    skin: float,
    *,
    growth: float = 1.3,
    previous: NeighbourSpec | None = None,
) -> NeighbourSpec:
    """A spec large enough for `positions` and `cell` with a margin of `growth`, never smaller
    than `previous` (used after an overflow)."""
    from ..graph import check_periodic_cell, neighbour_list

    if not (math.isfinite(skin) and skin >= 0):
        raise InputError(f"neighbour list: skin must be >= 0 and finite, got {skin} Å.")
    positions = np.asarray(positions, np.float64)
    cell = np.asarray(cell, np.float64)
    check_periodic_cell(cell, np.asarray(pbc), "neighbour list")
    radius = cutoff + skin
    candidates = len(neighbour_list(positions, cell, np.asarray(pbc), radius, min_distance=None)[0])
    num_edges = len(neighbour_list(positions, cell, np.asarray(pbc), cutoff, min_distance=None)[0])
    images = host_images(cell, pbc, radius)
    candidate_capacity = int(math.ceil(candidates * growth)) + 8
    edge_capacity = int(math.ceil(num_edges * growth)) + 8
    if previous is not None:
        images = tuple(max(a, b) for a, b in zip(images, previous.images, strict=True))
        candidate_capacity = max(candidate_capacity, previous.candidate_capacity)
        edge_capacity = max(edge_capacity, previous.edge_capacity)
    return NeighbourSpec(
        cutoff=float(cutoff),
        skin=float(skin),
        pbc=(bool(pbc[0]), bool(pbc[1]), bool(pbc[2])),
        images=(int(images[0]), int(images[1]), int(images[2])),
        candidate_capacity=candidate_capacity,
        edge_capacity=edge_capacity,
    )


def grow(
    spec: NeighbourSpec, candidates: int, num_edges: int, growth: float = 1.3
) -> NeighbourSpec:
    """A larger spec after an overflow with the counts the device reported."""
    return spec._replace(
        candidate_capacity=max(spec.candidate_capacity, int(math.ceil(candidates * growth)) + 8),
        edge_capacity=max(spec.edge_capacity, int(math.ceil(num_edges * growth)) + 8),
    )
