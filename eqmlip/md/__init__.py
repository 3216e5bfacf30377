"""Molecular dynamics inside JAX: jitted integrators with an on-device neighbour list."""

from ._neighbours import (
    NeighbourList as NeighbourList,
    NeighbourSpec as NeighbourSpec,
    allocate as allocate,
    build as build,
    edges as edges,
    needs_rebuild as needs_rebuild,
    update as update,
)
