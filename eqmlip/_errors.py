"""Exceptions for bad user input, importable without JAX (the CLI's `--help` stays fast)."""


class InputError(ValueError):
    """A user's input (a data or model file, a structure, a command-line option) is wrong.

    The message is complete: it names the file, frame, key or option, what was received and
    what was expected. The `eqmlip` command prints it as one line, `error: ...`, and exits
    with status 2; other exceptions are internal errors and print a traceback.
    """


class ConfigError(InputError):
    """A run configuration with an unknown key or a bad value."""
