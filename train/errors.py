"""The one exception type that entry scripts turn into a one-line error and a non-zero exit."""


class ScionError(Exception):
    """A problem the user can fix (bad config, bad data, missing file). The message says what and where."""

    exit_code = 2


# EX_TEMPFAIL: "try again later" — what a scheduler should do with a preempted run.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Raised after the preemption checkpoint is written (train/trainer.py)."""

    exit_code = PREEMPTED_EXIT_CODE
