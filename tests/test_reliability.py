"""Every row of the table in docs/reliability.md, run as written: the command (or Python
expression) of the row must fail with exactly the message the row shows, as one line, with exit
status 2 for commands. The page is the test's data, so it cannot drift from what users see."""

import re
import shlex
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from eqmlip.cli import main
from eqmlip.io import save_model

PAGE = Path(__file__).parent.parent / "docs" / "reliability.md"


def _rows() -> list[tuple[str, str, str]]:
    """`(bad input, command, message)` of each table row, the code spans unquoted."""
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if len(cells) != 3 or not cells[1].startswith("`") or cells[0] == "Bad input":
            continue
        command, message = (c.strip("`").replace("\\|", "|") for c in cells[1:])
        rows.append((cells[0], command, message))
    return rows


ROWS = _rows()


def test_the_table_covers_the_inputs():
    commands = " ".join(command for _, command, _ in ROWS)
    assert len(ROWS) >= 25
    for what in ("eqmlip train", "eqmlip evaluate", "eqmlip md", "Structure(", "Graph("):
        assert what in commands


def _frame(rng, symbols: str, positions=None) -> ase.Atoms:
    if positions is None:
        positions = rng.uniform(0, 1, (len(symbols) // 2, 3)) + 2.5 * np.eye(3)[: len(symbols) // 2]
    atoms = ase.Atoms(symbols, positions=positions)
    atoms.calc = EMT()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    """The files the table's commands name, in one directory."""
    folder = tmp_path_factory.mktemp("reliability")
    rng = np.random.default_rng(0)
    good = [_frame(rng, "".join(rng.choice(["Cu", "Au"], 3))) for _ in range(6)]
    ase.io.write(folder / "good.xyz", good)
    ase.io.write(folder / "unknown.xyz", [*good[:2], _frame(rng, "CuAgAu")])
    nan = _frame(rng, "CuAuCu")
    nan.positions[1, 2] = np.nan
    ase.io.write(folder / "nan.xyz", [*good[:2], nan])
    inf = _frame(rng, "CuAuCu")
    inf.cell = np.diag([6.0, 6.0, np.inf])
    ase.io.write(folder / "infcell.xyz", [*good[:2], inf])
    close = _frame(rng, "CuAuCu", [[0, 0, 0], [0, 0, 0.02], [2.5, 0, 0]])
    ase.io.write(folder / "coincide.xyz", [good[0], close])
    (folder / "empty.xyz").write_text("")
    (folder / "notes.xyz").write_text("hello\n")
    (folder / "runs").mkdir()
    save_model(folder / "model.eqx", model)
    data = bytearray((folder / "model.eqx").read_bytes())
    data[-100] ^= 1  # one bit of one parameter
    (folder / "flipped.eqx").write_bytes(bytes(data))
    return folder


def _matches(expected: str, actual: str) -> bool:
    """`…` in the documented message stands for text that differs between runs (digests)."""
    pattern = ".*".join(re.escape(part) for part in expected.split("…"))
    return re.fullmatch(pattern, actual) is not None


@pytest.mark.parametrize("what, command, message", ROWS, ids=[r[0] for r in ROWS])
def test_row(what, command, message, files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    if command.startswith("eqmlip "):
        status = main(shlex.split(command)[1:])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert status == 2, err
        assert "compiling" not in out  # refused before anything compiled
        assert lines and _matches(message, lines[-1]), lines[-1:]
        # Nothing but warnings of the data statistics may precede the one error line.
        assert all("Warning" in line or line.startswith(" ") for line in lines[:-1]), lines
    else:
        namespace: dict = {}
        exec("import numpy as np\nimport ase\nfrom eqmlip import Graph\n", namespace)
        exec("from eqmlip.data import Structure\n", namespace)
        exec("from eqmlip.calculator import EqmlipCalculator\n", namespace)
        exec("from eqmlip.models.nequip import Nequip\n", namespace)
        with pytest.raises(Exception) as caught:
            exec(command, namespace)
        actual = f"{type(caught.value).__name__}: {caught.value}"
        assert _matches(message, actual), actual
