"""One exception type for bad user input: the CLI turns it into one line on stderr and exit code 2."""


class PrunekitError(Exception):
    """Bad input (file, config, name, checkpoint). The message says what is wrong and how to fix it."""


def escape(text: str) -> str:
    """``text`` with every non-printable character (newline, carriage return, ANSI escape, bidi control) written
    as a Python escape such as ``\\n`` or ``\\x1b``, so a path or a string from a file cannot forge lines,
    colours or a fake ``prunekit:`` line in what the command prints."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in text)
