"""The one user-facing error type of jetcap and its exit-code-carrying subclasses.

Library code raises these; the CLI turns them into a one-line message and an exit code in exactly
one place (``jetcap.cli.main``).  Python 3.6 compatible: imported by the torch-free runtime.
"""


class JetcapError(Exception):
    """An error the user can act on.  ``exit_code`` is what the CLI exits with (2: bad input/env)."""

    exit_code = 2

    def __init__(self, message, hint=None):
        super(JetcapError, self).__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self):
        if self.hint:
            return "{} ({})".format(self.message, self.hint)
        return self.message


class UsageError(JetcapError):
    """Bad arguments or input files."""


class CheckpointError(JetcapError):
    """A checkpoint that cannot be loaded safely or does not fit its model family."""


class MissingDependencyError(JetcapError):
    """An optional package (torch, onnxruntime, tensorrt, ...) is needed but not installed."""


class InsufficientMemoryError(JetcapError):
    """Loading would need more memory than the process may use; refused before trying."""


class BundleError(JetcapError):
    """A bundle directory or manifest that is missing, malformed or inconsistent."""


class InferenceFailed(JetcapError):
    """A model call failed while a run was under way (a frame of ``caption-stream``): exit code 1, after
    the run's cleanup and summary, like any other failure of a run that had started."""

    exit_code = 1


class ValidationFailed(JetcapError):
    """Numeric validation ran and found outputs outside tolerance (exit code 1)."""

    exit_code = 1
