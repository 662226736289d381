"""User-facing error type: one clear line naming the file or setting at fault."""


def one_line(text: str) -> str:
    """``text`` with every line break and other unprintable character written as its escape
    (``\\n``, ``\\x1b``, ``\\u2028``), so a file name or setting value quoted in a message cannot
    break it over lines or drive the terminal."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class BrainFLError(Exception):
    """A mistake in the user's data or settings, reported as a single line.

    Code that catches it prints ``str(error)`` and exits without a traceback; the message is
    :func:`one_line` whatever the names and values it quotes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(str(message)))


EXIT_USER_ERROR = 2  # the exit code of a command stopped by a BrainFLError
