import contextlib
import dataclasses
import io
import json
import pathlib
import re
import subprocess
import sys

import ase.io
import ase.md.langevin
import jax
import numpy as np
import pytest
import yaml
from ase import units
from ase.md.langevin import Langevin

from eqmlip.cli import ConfigError, load_config, main, parse_overrides
from eqmlip.data import load_datasets, read_structures, statistics, write_structures
from eqmlip.io import load_model, read_header
from eqmlip.models.mace import Mace
from eqmlip.training import RunConfig, TrainConfig, run

TINY_ARGS = [
    "--data.num_generated=12",
    "--model.cutoff=3.5",
    "--model.num_layers=1",
    "--model.target_irreps=4x0e+2x1o",
    "--model.l_max=1",
    "--model.num_rbf=4",
    "--model.radial_mlp_hidden=[8]",
    "--train.epochs=2",
    "--train.quiet=true",
]


# Set in a config file (the rest are overrides); `test_a_script_reproduces_the_cli` passes the
# same keys as overrides.
TINY_FILE = {"data": {"split": [0.5, 0.25, 0.25]}, "train": {"batch_size": 3}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[pathlib.Path, str]:
    """`eqmlip train` of the tiny NequIP, once for the tests of this file (each training
    compiles its steps): the run's directory and what it printed."""
    tmp_path = tmp_path_factory.mktemp("cli")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_FILE))
    out_dir = tmp_path / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(config), f"--output_dir={out_dir}", *TINY_ARGS]) == 0
    return out_dir, printed.getvalue()


def test_train_evaluate_md(tmp_path, capsys, alloy_structures, monkeypatch, trained):
    out_dir, printed = trained
    assert "test metrics (3 structures" in printed and "force std" in printed
    model_path = out_dir / "model.eqx"
    header = read_header(model_path)
    assert header["hyperparameters"]["config"]["target_irreps"] == "4x0e+2x1o"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["test_metrics"]["forces_mae"] > 0
    assert len((out_dir / "log.csv").read_text().splitlines()) == 3  # header + 2 epochs

    data = tmp_path / "data.xyz"
    write_structures(data, alloy_structures[:3])
    assert main(["evaluate", str(model_path), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_structures"] == 3 and metrics["stress_mae"] is not None

    # The ASE calculator loop (the jitted engine's default ensemble: the MACE test below).
    assert main(["md", str(model_path), str(data), "--steps=5", "--json", "--engine=ase"]) == 0
    md = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert md["engine"] == "ase" and md["steps"] == 5 and md["compilations"] == 1
    assert md["mean_temperature_k"] > 0
    assert md["compile_time_s"] > 0 and md["steps_per_second"] > 0

    # The jitted engine: NPT on two replicas, with a trajectory of each.
    trajectory = tmp_path / "npt.extxyz"
    args = ["md", str(model_path), str(data), "--steps=4", "--json", "--ensemble=npt"]
    args += ["--pressure=1", "--replicas=2", f"--trajectory={trajectory}", "--every=2"]
    assert main(args) == 0
    md = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert md["engine"] == "jax" and md["steps"] == 4 and md["compilations"] == 1
    assert md["replicas"] == 2 and md["ensemble"] == "npt" and np.isfinite(md["mean_pressure_gpa"])
    assert md["mean_temperature_k"] > 0
    assert md["compile_time_s"] > 0 and md["steps_per_second"] > 0
    for k in range(2):
        assert len(ase.io.read(tmp_path / f"npt_{k}.extxyz", index=":")) == 3

    relaxed = tmp_path / "relaxed.xyz"
    args = ["relax", str(model_path), str(data), "--fmax=0.5", "--json", f"--output={relaxed}"]
    args.append("--cell")
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["converged"] and out["fmax"] < 0.5 and out["steps"] >= 0
    assert read_structures(relaxed)[0].num_atoms == alloy_structures[2].num_atoms

    # The friction given in 1/fs is the thermostat's, converted to ASE's time unit.
    used = {}

    class Spy(Langevin):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            used["friction_per_fs"] = self.fr * units.fs

    monkeypatch.setattr(ase.md.langevin, "Langevin", Spy)
    args = ["md", str(model_path), str(data), "--steps=2", "--json", "--thermostat=langevin"]
    args.append("--engine=ase")
    assert main([*args, "--friction=0.02"]) == 0
    assert used["friction_per_fs"] == pytest.approx(0.02)


MACE_MODEL = {
    "name": "mace",
    "cutoff": 3.5,
    "num_layers": 1,
    "num_channels": 4,
    "l_max": 1,
    "correlation": 2,
    "num_rbf": 4,
    "radial_mlp_hidden": [8],
}


def test_train_evaluate_md_mace(tmp_path, capsys, alloy_structures):
    """MACE through the same commands as NequIP (the shared core has no MACE branch): train
    and save, read back by evaluate and md; the radial pre-factor from the data's avg_r_min."""
    config = tmp_path / "mace.yaml"
    # `name: mace` drops the default's NequIP options; the rest are MaceConfig's fields.
    config.write_text(yaml.safe_dump({"model": MACE_MODEL}))
    out_dir = tmp_path / "run"
    args = ["--data.num_generated=12", "--train.epochs=1", "--train.batch_size=3"]
    assert main(["train", str(config), f"--output_dir={out_dir}", *args, "--train.quiet=true"]) == 0
    assert "model: mace," in capsys.readouterr().out
    model_path = out_dir / "model.eqx"
    header = read_header(model_path)
    assert header["model"] == "mace"
    assert header["hyperparameters"]["config"]["correlation"] == 2
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["steps"] > 0 and summary["test_metrics"]["forces_mae"] > 0
    # mlip's MACE reads avg_r_min_angstrom from its dataset info: here, the training set's.
    model = load_model(model_path)
    written = RunConfig.from_dict(yaml.safe_load((out_dir / "config.yaml").read_text()))
    train_set, _, _ = load_datasets(written.data)
    expected = statistics(train_set, cutoff=3.5).avg_r_min
    assert expected is not None and 2.0 < expected < 3.5
    assert isinstance(model, Mace) and model.avg_r_min == expected and model.radial_scale != 1.0

    data = tmp_path / "data.xyz"
    write_structures(data, alloy_structures[:3])
    assert main(["evaluate", str(model_path), str(data), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_structures"] == 3 and metrics["forces_mae"] > 0
    assert main(["md", str(model_path), str(data), "--steps=5", "--json"]) == 0
    md = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert md["engine"] == "jax" and md["steps"] == 5 and md["compilations"] == 1
    assert md["mean_temperature_k"] > 0
    assert md["compile_time_s"] > 0 and md["steps_per_second"] > 0


@pytest.mark.parametrize(
    "option, message",
    [
        ("--timestep=0", "--timestep must be > 0 fs, got 0.0"),
        ("--timestep=-1", "--timestep must be > 0 fs, got -1.0"),
        ("--temperature=-5", "--temperature must be >= 0 K, got -5.0"),
        ("--steps=0", "--steps must be >= 1, got 0"),
        ("--friction=-0.1", re.escape("--friction must be >= 0 (1/fs), got -0.1")),
        ("--replicas=0", "--replicas must be >= 1, got 0"),
        ("--pressure=nan", r"--pressure must be finite \(GPa\), got nan"),
        (
            "--index=3",
            r"--index 3 is past the end of .*data.xyz \(3 frame\(s\): valid indices are -3..2\)",
        ),
    ],
)
def test_md_refuses_bad_options_in_one_line(tmp_path, capsys, alloy_structures, option, message):
    data = tmp_path / "data.xyz"
    write_structures(data, alloy_structures[:3])
    # Refused before the (here missing) model file is read or anything is compiled.
    assert main(["md", str(tmp_path / "missing.eqx"), str(data), option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: eqmlip md: ")
    assert re.search(message, err)


def test_another_model_name_drops_the_default_options(tmp_path):
    assert "target_irreps" in load_config()["model"]  # the default's NequIP options
    documented = pathlib.Path(__file__).resolve().parents[1] / "docs/assets/mace-default.yaml"
    for config in (
        load_config(None, ["--model.name=mace", "--model.num_channels=4"]),
        load_config(_yaml_file(tmp_path, {"model": {"name": "mace"}}), ["--model.l_max=1"]),
        load_config(str(documented)),  # docs/training.md's MACE on the embedded default
    ):
        assert "target_irreps" not in config["model"]
        model = RunConfig.from_dict(config).model
        assert model.name == "mace" and model.cutoff == load_config()["model"]["cutoff"]


def _yaml_file(tmp_path, content) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(content))
    return str(path)


def test_overrides_are_parsed():
    assert parse_overrides(["--train.epochs=5", "--model.l_max", "2", "--resume=true"]) == {
        "train": {"epochs": 5},
        "model": {"l_max": 2},
        "resume": True,
    }
    config = load_config(None, ["--train.learning_rate=1e-3", "--model.radial_mlp_hidden=[4, 4]"])
    assert config["train"]["learning_rate"] == 1e-3
    assert config["model"]["radial_mlp_hidden"] == [4, 4]
    assert config["train"]["epochs"] == load_config()["train"]["epochs"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train.epoch=5"], r"unknown key train\.epoch.*'epochs'"),
        (["--optimizer=adam"], r"unknown key 'optimizer'.*'train'"),
        (["--train=5"], "must name a key of the 'train' section"),
        (["--train.epochs"], "has no value"),
        (["stray"], "expected an override"),
    ],
    ids=["misspelt", "unknown-section", "section-value", "no-value", "positional"],
)
def test_bad_overrides(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_overrides(args)


def test_bad_config_exits_with_message(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  lmax: 2\n")
    assert main(["train", str(bad)]) == 2
    assert "unknown key model.lmax" in capsys.readouterr().err
    assert main(["train", "--train.epochs=0", f"--output_dir={tmp_path}"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_a_script_reproduces_the_cli(tmp_path, trained):
    """`eqmlip train FILE ARGS` is `run(RunConfig.from_dict(...))` of the same keys: same model."""
    out_dir, _ = trained
    args = [*TINY_ARGS, f"--data.split={TINY_FILE['data']['split']}"]
    args.append(f"--train.batch_size={TINY_FILE['train']['batch_size']}")
    overrides = parse_overrides([f"--output_dir={tmp_path / 'script'}", *args])
    result = run(RunConfig.from_dict(overrides))
    from_cli = load_model(out_dir / "model.eqx")
    for a, b in zip(jax.tree.leaves(from_cli), jax.tree.leaves(result.model), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # The written config is complete: every field of every section, and it reruns as is.
    written = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert RunConfig.from_dict(written).to_dict() == written
    # `energy_scale: auto` is written as the number it resolved to.
    assert written["model"]["energy_scale"] == pytest.approx(result.statistics.force_rms)
    assert set(written["model"]) >= {"name", "cutoff", "num_layers", "gate_nonlinearities"}
    assert set(written["train"]) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_the_command_starts_without_jax():
    """`eqmlip --help` answers at once: the CLI module imports neither JAX nor the layers."""
    code = "import sys, eqmlip.cli; print(sorted(m for m in ('jax', 'equinox', 'eqmlip.nn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "eqmlip", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "train" in help_text and "evaluate" in help_text and "md" in help_text
