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
