"""Every Python block in README.md and docs/*.md runs as written; every public name is in the API
reference; the site renders maths offline."""

import importlib
import os
import pathlib
import re
import subprocess
import sys
import types

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


def test_hypothesis_examples_carry_settings_for_jax():
    # Under Hypothesis's defaults the first, compiling, example trips the 200 ms deadline: every
    # `@hypothesis.given` in the docs sits under `testing.hypothesis_settings` (or settings).
    for block in BLOCKS:
        lines = [line.strip() for line in str(block.values[0]).splitlines()]
        for i, line in enumerate(lines):
            if line.startswith("@hypothesis.given"):
                assert i > 0 and lines[i - 1].startswith(
                    ("@testing.hypothesis_settings(", "@hypothesis.settings(")
                ), f"{block.id}: {line} without settings above it"


@pytest.mark.parametrize("source", BLOCKS)
def test_example_runs(source, monkeypatch):
    import hypothesis

    monkeypatch.chdir(ROOT)  # examples name files relative to the repository root
    namespace: dict = {}
    if "my_layer" in source:  # a template for the reader's own layer: fill in an equivariant one
        import e3nn_jax as e3nn

        namespace["my_layer"] = e3nn.norm
    # As a reader runs them: under Hypothesis's own defaults, not the suite's profile. The
    # examples mix the Flax originals in, which need standard dtype promotion.
    current = getattr(hypothesis.settings, "_current_profile", None) or "ci"
    hypothesis.settings.load_profile("default")
    try:
        with jax.numpy_dtype_promotion("standard"):
            exec(compile(source, "<doc example>", "exec"), namespace)
            for name, value in list(namespace.items()):
                if name.startswith("test_") and callable(value):
                    value()
    finally:
        hypothesis.settings.load_profile(current)


PUBLIC_MODULES = [
    "eqmlip",
    "eqmlip.nn",
    "eqmlip.ops",
    "eqmlip.data",
    "eqmlip.training",
    "eqmlip.training.distributed",
    "eqmlip.testing",
    "eqmlip.interop",
    "eqmlip.models",
    "eqmlip.models.nequip",
    "eqmlip.models.mace",
    "eqmlip.ops.mace",
    "eqmlip.potential",
    "eqmlip.parallel",
    "eqmlip.io",
    "eqmlip.calculator",
    "eqmlip.md",
]


def _resolve(path: str):
    """The object a mkdocstrings `::: a.b.c` directive names."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def test_every_public_class_and_function_is_in_the_api_reference():
    text = "\n".join(p.read_text() for p in sorted((ROOT / "docs" / "api").glob("*.md")))
    documented: set[int] = set()
    for path, options in re.findall(r"^::: ([\w.]+)((?:\n    .*)*)", text, re.M):
        obj = _resolve(path)
        documented.add(id(obj))
        if isinstance(obj, types.ModuleType) and "members: false" not in options:
            documented.update(id(getattr(obj, k)) for k in dir(obj) if not k.startswith("_"))
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        # dir and getattr, not vars: they see the names a module imports on first use.
        for name in dir(module):
            obj = getattr(module, name)
            is_ours = str(getattr(obj, "__module__", "")).startswith("eqmlip")
            if name.startswith("_") or not is_ours or not callable(obj):
                continue
            if id(obj) not in documented:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"public names missing from docs/api/*.md: {missing}"


def test_maths_renders_offline(tmp_path):
    """MathJax is served by the site itself: neither mkdocs.yml nor any built page loads a
    script from another host, and every page with maths loads the vendored MathJax."""
    pytest.importorskip("mkdocs", reason="the docs extra builds the site")
    config = (ROOT / "mkdocs.yml").read_text()
    (listed,) = re.findall(r"^extra_javascript:\n((?:  - .*\n)+)", config, re.M)
    scripts = re.findall(r"^  - (\S+)$", listed, re.M)
    assert "assets/mathjax/tex-svg.js" in scripts
    for script in scripts:
        assert not re.match(r"(https?:)?//", script), script
        assert (ROOT / "docs" / script).is_file(), script
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
    subprocess.run([*command, "--site-dir", str(tmp_path)], cwd=ROOT, env=env, check=True)
    pages_with_maths = 0
    for page in tmp_path.rglob("*.html"):
        html = page.read_text()
        sources = re.findall(r"<script[^>]*\bsrc=\"([^\"]+)\"", html)
        remote = [s for s in sources if re.match(r"(https?:)?//", s)]
        assert not remote, (page, remote)
        if 'class="arithmatex"' in html:
            pages_with_maths += 1
            local = [(page.parent / s).resolve() for s in sources if s.endswith("tex-svg.js")]
            assert local and local[0].is_file(), page
    assert pages_with_maths >= 3
