"""The shipped Hypothesis settings, and every docstring example of `eqmlip.testing` run as written
under Hypothesis's own defaults (the 200 ms deadline included)."""

import inspect
import re
import time

import hypothesis
import hypothesis.strategies as st
import pytest

from eqmlip import testing


def test_shipped_profiles():
    profile = hypothesis.settings.get_profile("eqmlip")
    assert profile.deadline is None
    assert profile.derandomize is True
    assert profile.max_examples == 20
    assert hypothesis.Phase.explain not in profile.phases
    assert hypothesis.Phase.shrink in profile.phases
    assert hypothesis.HealthCheck.too_slow in profile.suppress_health_check
    thorough = hypothesis.settings.get_profile("eqmlip-thorough")
    assert (thorough.max_examples, thorough.derandomize, thorough.deadline) == (200, False, None)


def test_settings_arguments_and_overrides():
    s = testing.hypothesis_settings(max_examples=3, derandomize=False, deadline=1000)
    assert (s.max_examples, s.derandomize) == (3, False)
    assert s.deadline is not None and s.deadline.total_seconds() == 1.0


def test_the_profile_runs_a_compiling_first_example():
    # A first example slower than Hypothesis's 200 ms deadline, as a compile is.
    calls = []

    @testing.hypothesis_settings(max_examples=2)
    @hypothesis.given(st.integers())
    def slow_first(i):
        if not calls:
            time.sleep(0.3)
        calls.append(i)

    slow_first()
    assert len(calls) == 2


def _docstring_examples():
    objects = [testing] + [getattr(testing, name) for name in testing.__all__]
    seen = set()
    for obj in objects:
        doc = inspect.getdoc(obj) or ""
        for i, block in enumerate(re.findall(r"```python\n(.*?)```", doc, re.S)):
            name = f"{getattr(obj, '__name__', 'testing')}-{i}"
            if name not in seen:
                seen.add(name)
                yield name, block


EXAMPLES = dict(_docstring_examples())


def test_every_public_function_with_hypothesis_has_an_example():
    names = {name.rsplit("-", 1)[0] for name in EXAMPLES}
    expected = {
        "eqmlip.testing",
        "assert_equivariant",
        "equivariance_error",
        "assert_potential_symmetries",
        "hypothesis_settings",
        "irreps_arrays",
        "o3_matrices",
        "molecules",
        "crystals",
        "graphs",
    }
    assert expected <= names


@pytest.mark.parametrize("source", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_docstring_example_runs_under_hypothesis_defaults(source):
    current = getattr(hypothesis.settings, "_current_profile", None) or "ci"
    hypothesis.settings.load_profile("default")
    try:
        namespace: dict = {}
        exec(compile(source, "<docstring example>", "exec"), namespace)
        tests = [v for k, v in namespace.items() if k.startswith("test_") and callable(v)]
        assert tests, "each example defines a test"
        for test in tests:
            test()
    finally:
        hypothesis.settings.load_profile(current)
