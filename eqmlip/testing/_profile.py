"""Hypothesis settings that suit JAX tests: no deadline, bounded and reproducible examples."""

from typing import Any

import hypothesis


# Returns a `hypothesis.settings`, annotated `Any`: beartype rejects that class as a hint (its
# repr in unions is inconsistent).
def hypothesis_settings(*, max_examples: int = 20, derandomize: bool = True, **kwargs) -> Any:
    """Hypothesis settings for testing JAX code; use as a decorator or register as a profile.

    Hypothesis's defaults do not suit JAX: the first example of a test compiles, which takes
    far longer than the default 200 ms deadline and fails correct code with `FlakyFailure`
    (or `DeadlineExceeded`), and 100 examples of compiled code are slow on a CPU. These
    settings switch the deadline off, bound the examples, draw the same examples on every run
    (`derandomize`, so a failure reproduces) and print the blob that replays a failure
    (`@hypothesis.reproduce_failure`). The `too_slow` health check is suppressed (the first
    example's compile makes it fire), and the `explain` phase is skipped: it reruns a failing
    example under a line tracer, which makes JAX's tracing and dispatch minutes slower.

    Importing `eqmlip.testing` registers two profiles built by this function: `"eqmlip"`
    (these defaults) and `"eqmlip-thorough"` (200 random examples): select one with
    `hypothesis.settings.load_profile("eqmlip")` in your `conftest.py`, or with
    `pytest --hypothesis-profile=eqmlip`.

    **Arguments:**

    - `max_examples`: examples per test.
    - `derandomize`: draw the same examples on every run.
    - `**kwargs`: any other `hypothesis.settings` argument, which wins over the above.

    **Returns:** a `hypothesis.settings`.

    **Example:**

    ```python
    import hypothesis
    import jax
    import e3nn_jax as e3nn
    from eqmlip import testing

    norm = jax.jit(e3nn.norm)

    @testing.hypothesis_settings(max_examples=10)
    @hypothesis.given(testing.irreps_arrays("1o + 2e"), testing.o3_matrices())
    def test_norm_is_invariant(x, matrix):
        testing.assert_equivariant(norm, x, matrix=matrix)
    ```
    """
    options = {
        "max_examples": max_examples,
        "deadline": None,
        "derandomize": derandomize,
        "print_blob": True,
        "suppress_health_check": [hypothesis.HealthCheck.too_slow],
        "phases": [p for p in hypothesis.Phase if p is not hypothesis.Phase.explain],
    }
    options.update(kwargs)
    return hypothesis.settings(**options)


hypothesis.settings.register_profile("eqmlip", hypothesis_settings())
hypothesis.settings.register_profile(
    "eqmlip-thorough", hypothesis_settings(max_examples=200, derandomize=False)
)
