"""The one exception type the CLI turns into a one-line message and a non-zero exit."""
import difflib
import sys


class MvmoeError(Exception):
    """A problem the user can fix (bad input, missing file, wrong layout). The message says how."""


def did_you_mean(word: str, choices) -> str:
    """'; did you mean X?' for the closest of `choices` (difflib), or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def run_script(main) -> None:
    """Entry point of a bench/ script: ``main()``'s return value is the exit code; an MvmoeError
    becomes ``error: <message>`` on stderr and exit 1, as in the ``mvmoe`` command."""
    try:
        sys.exit(main())
    except MvmoeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
