"""`import eqmlip.testing` stays light: no training stack (eqmlip.training, optax), no models, layers,
data pipeline or potential machinery; they load when `potential_function` is called."""

import subprocess
import sys


def test_import_does_not_load_the_training_stack():
    code = (
        "import sys, eqmlip.testing\n"
        "heavy = ('eqmlip.training', 'optax', 'eqmlip.potential', 'eqmlip.calculator', "
        "'eqmlip.io', 'eqmlip.md', 'eqmlip.parallel', 'eqmlip.models', 'eqmlip.nn', "
        "'eqmlip.data', 'eqmlip.interop', 'eqmlip.cli')\n"
        "print(sorted({m.split('.')[0] + '.' + m.split('.')[1] if m.startswith('eqmlip.') "
        "else m.split('.')[0] for m in sys.modules if m.startswith(heavy)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_potential_checks_do_not_load_e3nn():
    # e3nn-jax (with scipy.signal and its Flax bridges) is most of the import time beyond JAX;
    # checking a hand-written potential on drawn structures does not need it.
    code = (
        "import sys, eqmlip.testing as t\n"
        "print('e3nn_jax' in sys.modules)\n"
        "t.assert_potential_symmetries, t.crystals, t.molecules, t.o3_matrices\n"
        "t.hypothesis_settings, t.default_tolerance\n"
        "print('e3nn_jax' in sys.modules)\n"
        "t.assert_equivariant\n"
        "print('e3nn_jax' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert result.stdout.split() == ["False", "False", "True"], result.stdout
