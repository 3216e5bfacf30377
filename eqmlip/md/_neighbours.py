"""Neighbour lists built and updated on the device, inside a jitted MD loop.

Two lists, both of fixed capacity (a static shape per compiled loop):

- a **Verlet (candidate) list**: every directed pair `i -> j` with a periodic image `S` such
  that `|x_j - x_i + S C| < cutoff + skin`, run only when atoms have moved far enough. Two
  searches give the same list: an all-pairs search over the images the cell needs
  (`O(nodes^2 images)`, best for small systems and tiny cells), and a **cell list**
  (`O(nodes)`): atoms are binned on a grid of the cell's fractional coordinates, each bin at
  least `cutoff + skin` wide across its lattice planes, and each atom is compared with the
  occupants of the bins within `reach` of its own (`(2 reach + 1)^3` bins, with the image
  shift of each);
- the **edges** of one step: the candidates within `cutoff` now, compacted into the graph's
  edge arrays, padding edges being self-loops on the padding node (the `eqmlip.Graph`
  convention).

Positions are never wrapped: the search wraps copies into the cell and converts each shift
back, so a candidate's shift is the one that applies to the unwrapped positions (which an MD
trajectory keeps, as ASE does). A count beyond a capacity, or a cell that needs more images
than were compiled (for a cell list: more atoms in a bin than `bin_capacity`, or a cell
compressed below the compiled grid) sets `overflow`; the host driver then re-allocates and
redoes the chunk, so a list is never silently truncated.
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
    - `bins`: `None` for the all-pairs search, else the cell list's grid (bins along each
        lattice vector).
    - `reach`: how many bins on each side of an atom's own the cell list searches, along
        each lattice vector (1 where a bin spans `cutoff + skin`; the image count where the
        cell is thinner than that and holds one bin).
    - `bin_capacity`: most atoms a bin of the cell list holds.
    """

    cutoff: float
    skin: float
    pbc: tuple[bool, bool, bool]
    images: tuple[int, int, int]
    candidate_capacity: int
    edge_capacity: int
    bins: tuple[int, int, int] | None = None
    reach: tuple[int, int, int] = (1, 1, 1)
    bin_capacity: int = 0

    @property
    def radius(self) -> float:
        return self.cutoff + self.skin


class NeighbourList(eqx.Module):
    """A Verlet list on the device (see the module docstring).

    - `senders`, `receivers`: `[capacity]` atom indices; entries past `count` are unused.
    - `shifts`: `[capacity, 3]` integer cell shifts for the unwrapped positions.
    - `count`: the number of candidates found (may exceed the capacity: then `overflow`).
    - `occupancy`: the most atoms found in one bin of the cell list (0 for all-pairs).
    - `reference_positions`, `reference_cell`: the geometry the list was built from.
    - `overflow`: a capacity or the image range was too small since the last re-allocation.
    """

    senders: Int[Array, " capacity"]
    receivers: Int[Array, " capacity"]
    shifts: Int[Array, "capacity 3"]
    count: Int[Array, ""]
    occupancy: Int[Array, ""]
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
) -> tuple[Float[Array, "nodes 3"], Int[Array, "nodes 3"], Float[Array, "nodes 3"]]:
    """Positions wrapped into the cell along periodic directions, the integer offsets `k`
    with `positions = wrapped + k @ cell`, and the wrapped fractional coordinates in the full
    cell (in `[0, 1)` along periodic directions, Å along the others)."""
    full = _full_cell(cell, pbc)
    fractional = jnp.linalg.solve(full.T, positions.T).T
    offsets = jnp.where(jnp.asarray(pbc), jnp.floor(fractional), 0.0)
    return positions - offsets @ cell, offsets.astype(jnp.int32), fractional - offsets


def _shift_table(images: tuple[int, int, int]) -> np.ndarray:
    ranges = [np.arange(-n, n + 1) for n in images]
    grid = np.stack(np.meshgrid(*ranges, indexing="ij"), axis=-1)
    return grid.reshape(-1, 3).astype(np.int32)


def _stencil(reach: tuple[int, int, int]) -> np.ndarray:
    """Bin offsets within `reach`, in lexicographic order (so that, for one sender and
    receiver, offsets and the image shifts they give are in the same order)."""
    return _shift_table(reach)


def _bin_coordinates(
    fractional: Float[Array, "nodes 3"],
    cell: Float[Array, "3 3"],
    spec: NeighbourSpec,
) -> tuple[Int[Array, "nodes 3"], Bool[Array, ""]]:
    """Each atom's bin along each lattice vector, and whether the compiled grid still spans
    `radius` within `reach` bins (it may not once a periodic cell has shrunk).

    A bin is `reach * width >= radius` wide across its lattice planes (`width` in Å): two
    atoms within `radius` are then at most `reach` bins apart along every lattice vector.
    Periodic directions split `[0, 1)` into `bins` equal parts; the others span the atoms'
    extent, with bins never narrower than `radius / reach`.
    """
    assert spec.bins is not None
    dtype = fractional.dtype
    periodic = jnp.asarray(spec.pbc)
    bins = jnp.asarray(spec.bins, jnp.int32)
    reach = jnp.asarray(spec.reach, dtype)
    spacing = _plane_spacings(_full_cell(cell, spec.pbc))  # Å per unit of fractional
    radius = jnp.asarray(spec.radius, dtype)
    if fractional.shape[0] > 0:
        low = jnp.min(fractional, axis=0)
        extent = jnp.max(fractional, axis=0) - low
    else:
        low = extent = jnp.zeros(3, dtype)
    open_width = jnp.maximum(extent / bins.astype(dtype), radius / (reach * spacing))
    width = jnp.where(periodic, 1.0 / bins.astype(dtype), open_width)
    origin = jnp.where(periodic, 0.0, low)
    coordinates = jnp.floor((fractional - origin) / width).astype(jnp.int32)
    coordinates = jnp.clip(coordinates, 0, bins - 1)
    spans = reach * width * spacing >= radius * (1.0 - _IMAGE_TOLERANCE)
    return coordinates, jnp.all(spans | ~periodic)


def _build_cell_list(
    positions: Float[Array, "nodes 3"], cell: Float[Array, "3 3"], spec: NeighbourSpec
) -> NeighbourList:
    """[`build`][] with a cell list (`spec.bins` set)."""
    assert spec.bins is not None
    nodes = positions.shape[0]
    dtype = positions.dtype
    capacity = spec.candidate_capacity
    bin_capacity = spec.bin_capacity
    grid = np.asarray(spec.bins, np.int32)
    num_bins = int(np.prod(grid))
    wrapped, offsets, fractional = _wrap(positions, cell, spec.pbc)
    coordinates, grid_spans = _bin_coordinates(fractional, cell, spec)
    flat_bin = (coordinates[:, 0] * grid[1] + coordinates[:, 1]) * grid[2] + coordinates[:, 2]

    # The occupants of each bin in increasing atom order, padded with `nodes`; one more,
    # always empty, bin stands for the bins outside a non-periodic grid.
    counts = jnp.zeros(num_bins, jnp.int32).at[flat_bin].add(1)
    order = jnp.argsort(flat_bin, stable=True).astype(jnp.int32)
    sorted_bins = flat_bin[order]
    starts = jnp.cumsum(counts, dtype=jnp.int32) - counts
    slots = jnp.arange(nodes, dtype=jnp.int32) - starts[sorted_bins]
    occupants = (
        jnp.full((num_bins + 1, bin_capacity), nodes, jnp.int32)
        .at[sorted_bins, slots]
        .set(order, mode="drop")
    )
    occupancy = jnp.max(counts, initial=0)

    stencil = _stencil(spec.reach)
    num_offsets = len(stencil)
    width = num_offsets * bin_capacity
    if nodes * num_offsets >= np.iinfo(np.int32).max:
        raise ValueError(
            f"neighbour list: a cell list over {nodes} atoms with reach {spec.reach} needs "
            "sort keys beyond int32; use the all-pairs search (bins=None)."
        )
    periodic = jnp.asarray(spec.pbc)
    padded = jnp.concatenate([wrapped, jnp.zeros((1, 3), dtype)])
    radius2 = jnp.asarray(spec.radius, dtype) ** 2
    sentinel = jnp.iinfo(jnp.int32).max

    # Rows of senders per block: bounds the [block, offsets, bin_capacity, 3] temporary (~4M
    # floats), in blocks of equal size (no block mostly padding).
    num_blocks = -(-nodes // max(1, (1 << 22) // max(1, 3 * width)))
    block = -(-nodes // max(1, num_blocks)) if nodes else 1
    columns = jnp.arange(width, dtype=jnp.int32)

    def search(carry, start):
        senders, receivers, shifts, count = carry
        rows = start + jnp.arange(block, dtype=jnp.int32)
        valid_rows = rows < nodes
        rows = jnp.where(valid_rows, rows, 0)
        target = coordinates[rows][:, None, :] + jnp.asarray(stencil)[None]  # [block, offsets, 3]
        image = jnp.where(periodic, jnp.floor_divide(target, grid), 0)
        target = target - image * grid
        inside = jnp.all((target >= 0) & (target < grid), axis=-1)
        target_bin = (target[..., 0] * grid[1] + target[..., 1]) * grid[2] + target[..., 2]
        target_bin = jnp.where(inside, target_bin, num_bins)
        candidates = occupants[target_bin]  # [block, offsets, bin_capacity]
        vectors = (
            padded[candidates]
            - wrapped[rows][:, None, None, :]
            + (image.astype(dtype) @ cell)[:, :, None, :]
        )
        self_pair = (candidates == rows[:, None, None]) & jnp.all(image == 0, axis=-1)[..., None]
        within = (
            (jnp.sum(vectors**2, axis=-1) < radius2)
            & (candidates < nodes)
            & ~self_pair
            & valid_rows[:, None, None]
        )
        # Receiver-major keys put each row in (receiver, shift) order: for one receiver, the
        # bin offsets that reach it differ by whole grid periods, in the order of their shifts.
        offset_index = jnp.arange(num_offsets, dtype=jnp.int32)[None, :, None]
        keys = jnp.where(within, candidates * num_offsets + offset_index, sentinel)
        keys = jnp.sort(keys.reshape(block, width), axis=-1)
        per_row = jnp.sum(within, axis=(1, 2), dtype=jnp.int32)
        found = keys != sentinel
        receiver, chosen = jnp.divmod(jnp.where(found, keys, 0), num_offsets)
        shift = (
            jnp.take_along_axis(image, chosen[..., None], axis=1)
            - offsets[receiver]
            + offsets[rows][:, None, :]
        )
        first = count + jnp.cumsum(per_row, dtype=jnp.int32) - per_row
        slot = jnp.where(found, first[:, None] + columns[None, :], capacity)  # dropped
        slot = slot.reshape(-1)
        sender = jnp.broadcast_to(rows[:, None], (block, width)).reshape(-1)
        senders = senders.at[slot].set(sender, mode="drop")
        receivers = receivers.at[slot].set(receiver.reshape(-1), mode="drop")
        shifts = shifts.at[slot].set(shift.reshape(-1, 3).astype(jnp.int32), mode="drop")
        return (senders, receivers, shifts, count + jnp.sum(per_row, dtype=jnp.int32)), None

    initial = (
        jnp.zeros(capacity, jnp.int32),
        jnp.zeros(capacity, jnp.int32),
        jnp.zeros((capacity, 3), jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    (senders, receivers, shifts, count), _ = jax.lax.scan(
        search, initial, jnp.arange(num_blocks, dtype=jnp.int32) * block
    )
    return NeighbourList(
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        count=count,
        occupancy=occupancy,
        reference_positions=positions,
        reference_cell=cell,
        overflow=(count > capacity) | (occupancy > bin_capacity) | ~grid_spans,
    )


def build(
    positions: Float[Array, "nodes 3"], cell: Float[Array, "3 3"], spec: NeighbourSpec
) -> NeighbourList:
    """The candidates within `spec.radius` (jittable): every pair and image searched, or a
    cell list if `spec.bins` is set (the same list, see the module docstring).

    Sorted by sender, receiver, then shift, like [`eqmlip.graph.neighbour_list`][]. Sets
    `overflow` if more candidates than `spec.candidate_capacity` exist or the cell needs more
    images than `spec.images` (all-pairs), or if a bin holds more than `spec.bin_capacity`
    atoms or the cell has shrunk below the compiled grid (cell list).
    """
    nodes = positions.shape[0]
    dtype = positions.dtype
    capacity = spec.candidate_capacity
    if spec.bins is not None:
        return _build_cell_list(positions, cell, spec)
    wrapped, offsets, _ = _wrap(positions, cell, spec.pbc)
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
        occupancy=jnp.zeros((), jnp.int32),
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
    vectors = positions[neighbours.receivers] - positions[neighbours.senders]
    if any(spec.pbc):  # without periodicity every shift is 0: no [capacity, 3] x [3, 3] product
        vectors = vectors + neighbours.shifts.astype(positions.dtype) @ cell
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


# A periodic bin is at least this much wider than `cutoff + skin`, so that a cell compressed by
# up to ~2% (NPT) keeps its compiled grid.
_GRID_MARGIN = 0.02
# The cell list is chosen when its distance tests per atom, weighted for the per-atom sort,
# are fewer than the all-pairs search's: on CPU a test of the cell list costs 1-2x one of the
# all-pairs search (benchmarks/neighbours.py: all-pairs wins at 64 Si atoms in one bin, the
# cell list from 216 atoms in 2x2x2 bins).
_SORT_WEIGHT = 2.0
SEARCHES = ("auto", "all_pairs", "cell_list")


def _host_grid(
    positions: Float[np.ndarray, "nodes 3"],
    cell: Float[np.ndarray, "3 3"],
    pbc: tuple[bool, bool, bool],
    radius: float,
    previous: NeighbourSpec | None,
) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """A cell-list grid for this geometry (merged with `previous`'s, so that it serves both)
    and the most atoms one of its bins holds, as [`_bin_coordinates`][] bins them."""
    from ..graph import _complement_basis

    periodic = np.asarray(pbc, bool)
    full = cell.copy()
    full[~periodic] = _complement_basis(cell[periodic])
    volume = abs(np.linalg.det(full))
    spacing = volume / np.linalg.norm(np.cross(full[[1, 2, 0]], full[[2, 0, 1]]), axis=-1)
    fractional = np.linalg.solve(full.T, positions.T).T
    fractional[:, periodic] -= np.floor(fractional[:, periodic])
    nodes = len(positions)
    low = fractional.min(0) if nodes else np.zeros(3)
    extent = fractional.max(0) - low if nodes else np.zeros(3)
    bins = np.where(
        periodic,
        np.floor(spacing / (radius * (1.0 + _GRID_MARGIN))),
        np.floor(extent / radius),
    ).astype(int)
    bins = np.maximum(bins, 1)
    # Far more bins than atoms (a molecule in a large box) only cost memory and time.
    while bins.prod() > 2 * nodes + 8:
        k = int(np.argmax(bins))
        bins[k] = -(-bins[k] // 2)
    if previous is not None and previous.bins is not None:
        bins = np.where(periodic, np.minimum(bins, previous.bins), np.maximum(bins, previous.bins))
    reach = np.where(
        periodic, np.ceil(radius * (1.0 - _IMAGE_TOLERANCE) * bins / spacing).astype(int), 1
    )
    reach = np.maximum(reach, 1)
    if previous is not None and previous.bins is not None:
        reach = np.maximum(reach, previous.reach)
    width = np.where(periodic, 1.0 / bins, np.maximum(extent / bins, radius / (reach * spacing)))
    origin = np.where(periodic, 0.0, low)
    coordinates = np.clip(np.floor((fractional - origin) / width).astype(int), 0, bins - 1)
    flat = np.ravel_multi_index(coordinates.T, bins) if nodes else np.zeros(0, int)
    occupancy = int(np.bincount(flat).max()) if nodes else 0
    return (
        (int(bins[0]), int(bins[1]), int(bins[2])),
        (int(reach[0]), int(reach[1]), int(reach[2])),
        occupancy,
    )


def allocate(
    positions: Float[np.ndarray, "nodes 3"],
    cell: Float[np.ndarray, "3 3"],
    pbc: tuple[bool, bool, bool],
    cutoff: float,
    skin: float,
    *,
    growth: float = 1.3,
    edge_growth: float = 1.1,
    previous: NeighbourSpec | None = None,
    search: str = "auto",
) -> NeighbourSpec:
    """A spec large enough for `positions` and `cell` with a margin of `growth` (candidates,
    bins) or `edge_growth` (edges), never smaller than `previous` (used after an overflow).

    The edges' margin is the smaller one: the model runs on every edge slot, padding included
    (a 1.3x margin was about a quarter of a molecule's step), while their count moves little
    at a fixed cell (hexanol at 300-500 K: +2.5% at most; a Si cell: +0.1%). An overflow
    costs one redone chunk and a recompilation, after which [`grow`][] leaves `growth`.

    `search`: `"all_pairs"`, `"cell_list"`, or `"auto"` (the cell list when it tests fewer
    pairs per atom, i.e. for large systems in cells several `cutoff + skin` wide). With
    `previous`, its search is kept.
    """
    from ..graph import check_periodic_cell, neighbour_list

    if not (math.isfinite(skin) and skin >= 0):
        raise InputError(f"neighbour list: skin must be >= 0 and finite, got {skin} Å.")
    if search not in SEARCHES:
        raise InputError(f"neighbour list: search must be one of {SEARCHES}, got {search!r}.")
    positions = np.asarray(positions, np.float64)
    cell = np.asarray(cell, np.float64)
    check_periodic_cell(cell, np.asarray(pbc), "neighbour list")
    radius = cutoff + skin
    candidates = len(neighbour_list(positions, cell, np.asarray(pbc), radius, min_distance=None)[0])
    num_edges = len(neighbour_list(positions, cell, np.asarray(pbc), cutoff, min_distance=None)[0])
    images = host_images(cell, pbc, radius)
    candidate_capacity = int(math.ceil(candidates * growth)) + 8
    # Edges are a subset of the candidates: never more slots than those.
    edge_capacity = min(int(math.ceil(num_edges * edge_growth)) + 8, candidate_capacity)
    bins, reach, occupancy = _host_grid(positions, cell, pbc, radius, previous)
    bin_capacity = int(math.ceil(occupancy * growth)) + 2
    if previous is not None:
        images = tuple(max(a, b) for a, b in zip(images, previous.images, strict=True))
        candidate_capacity = max(candidate_capacity, previous.candidate_capacity)
        edge_capacity = max(edge_capacity, previous.edge_capacity)
        bin_capacity = max(bin_capacity, previous.bin_capacity)
        cell_list = previous.bins is not None
    elif search == "auto":
        all_pairs_tests = len(positions) * math.prod(2 * n + 1 for n in images)
        cell_list_tests = math.prod(2 * n + 1 for n in reach) * bin_capacity * _SORT_WEIGHT
        cell_list = cell_list_tests < all_pairs_tests
    else:
        cell_list = search == "cell_list"
    return NeighbourSpec(
        cutoff=float(cutoff),
        skin=float(skin),
        pbc=(bool(pbc[0]), bool(pbc[1]), bool(pbc[2])),
        images=(int(images[0]), int(images[1]), int(images[2])),
        candidate_capacity=candidate_capacity,
        edge_capacity=edge_capacity,
        bins=bins if cell_list else None,
        reach=reach if cell_list else (1, 1, 1),
        bin_capacity=bin_capacity if cell_list else 0,
    )


def grow(
    spec: NeighbourSpec,
    candidates: int,
    num_edges: int,
    growth: float = 1.3,
    occupancy: int = 0,
) -> NeighbourSpec:
    """A larger spec after an overflow with the counts the device reported."""
    bin_capacity = spec.bin_capacity
    if spec.bins is not None:
        bin_capacity = max(bin_capacity, int(math.ceil(occupancy * growth)) + 2)
    return spec._replace(
        candidate_capacity=max(spec.candidate_capacity, int(math.ceil(candidates * growth)) + 8),
        edge_capacity=max(spec.edge_capacity, int(math.ceil(num_edges * growth)) + 8),
        bin_capacity=bin_capacity,
    )


def widen(spec: NeighbourSpec) -> NeighbourSpec:
    """One more image (all-pairs) or bin of reach (cell list) along each periodic direction:
    for an overflow the host's float64 geometry does not see (the device's float32 found the
    cell one image or bin short)."""
    more = [int(p) for p in spec.pbc]
    images = (spec.images[0] + more[0], spec.images[1] + more[1], spec.images[2] + more[2])
    reach = spec.reach
    if spec.bins is not None:
        reach = (reach[0] + more[0], reach[1] + more[1], reach[2] + more[2])
    return spec._replace(images=images, reach=reach)
