"""One exception type for bad user input: the CLI turns it into one line on stderr and exit code 2."""


class PrunekitError(Exception):
    """Bad input (file, config, name, checkpoint). The message says what is wrong and how to fix it."""
