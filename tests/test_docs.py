"""Every Python block in README.md and docs/*.md runs as written."""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCKS = [
    pytest.param(block, id=f"{page.name}-{i}")
    for page in PAGES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S))
]


def test_pages_have_examples():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("source", BLOCKS)
def test_example_runs(source, monkeypatch):
    monkeypatch.chdir(ROOT)  # examples name files relative to the repository root
    namespace: dict = {}
    if "my_layer" in source:  # a template for the reader's own layer: fill in an equivariant one
        import e3nn_jax as e3nn

        namespace["my_layer"] = e3nn.norm
    # The examples mix the Flax originals in, which need standard dtype promotion.
    with jax.numpy_dtype_promotion("standard"):
        exec(compile(source, "<doc example>", "exec"), namespace)
        for name, value in list(namespace.items()):
            if name.startswith("test_") and callable(value):
                value()
