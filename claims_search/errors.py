"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class ClaimsSearchError(Exception):
    """Bad input or an unusable environment, reported as one line naming what is wrong.

    Raise it with a message that names the file, column and, where it helps, the row or
    subject: ``ClaimsSearchError(f"{path}: column 'time' is not sorted for subject 42")``.
    """
