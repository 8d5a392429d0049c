"""One exception type for every user-facing failure, carrying the exit code the CLI returns.

The exit codes are a stable interface for pipelines: 0 ok, 1 internal error (a bug: report it),
2 bad input or usage, 3 bad or unknown model, 4 output cannot be written, 130 interrupted.
"""

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_BAD_MODEL = 3
EXIT_OUTPUT = 4
EXIT_INTERRUPTED = 130
EXIT_PIPE_CLOSED = 141  # as a process ended by SIGPIPE: the reader of standard output left


class ScdrError(Exception):
    """A failure the user can act on: a one-line message and a stable exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class InputError(ScdrError):
    """The input file or arrays cannot be scored as given."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_BAD_INPUT)


class BundleError(ScdrError):
    """A model bundle is missing, unknown, or fails its integrity checks."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_BAD_MODEL)


class OutputError(ScdrError):
    """The output cannot be written where asked."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_OUTPUT)
