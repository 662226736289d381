"""User-facing error type: one clear line naming the file or setting at fault."""


class BrainFLError(Exception):
    """A mistake in the user's data or settings, reported as a single line.

    Code that catches it prints ``str(error)`` and exits without a traceback.
    """


EXIT_USER_ERROR = 2  # the exit code of a command stopped by a BrainFLError
