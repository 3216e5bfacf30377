"""Interatomic potentials built from eqmlip's layers."""
