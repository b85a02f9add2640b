"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class MvmoeError(Exception):
    """A problem the user can fix (bad input, missing file, wrong layout). The message says how."""
