"""One exception type for problems the user can fix; the CLI prints its message as one line."""


class HighlightSenseError(Exception):
    """A problem with the input, the options or the environment, worded for the user.

    The message says what is wrong and what to do about it, on one line.
    """
