"""The one exception type that entry scripts turn into a one-line error and a non-zero exit."""


class ScionError(Exception):
    """A problem the user can fix (bad config, bad data, missing file). The message says what and where."""

    exit_code = 2
