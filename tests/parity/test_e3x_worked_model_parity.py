"""The worked e3x force field of docs/porting-e3x.md, run under jax_enable_x64: energy and forces
of the eqmlip port equal the e3x model's to 1e-10 relative."""

import pathlib
import re

import jax
import jax.numpy as jnp
import pytest

pytestmark = pytest.mark.parity

PAGE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "porting-e3x.md"


def test_worked_force_field_matches_e3x_in_float64():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    (source,) = [b for b in blocks if "class E3xForceField" in b]
    namespace: dict = {}
    with jax.enable_x64(True):
        exec(compile(source, str(PAGE), "exec"), namespace)
        e, f, e_flax, f_flax = (namespace[k] for k in ("e", "f", "e_flax", "f_flax"))
        assert e.dtype == e_flax.dtype == f.dtype == jnp.float64
        assert f.shape == f_flax.shape == (9, 3)
        assert float(jnp.abs(e - e_flax)) <= 1e-10 * float(jnp.abs(e_flax))
        assert float(jnp.max(jnp.abs(f - f_flax))) <= 1e-10 * float(jnp.max(jnp.abs(f_flax)))
        assert float(jnp.max(jnp.abs(f_flax))) > 0.01
