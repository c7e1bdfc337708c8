"""A benign race in Ray Tune's experiment-state sync, logged as one line instead of a traceback.

Ray Tune (2.6x) copies its driver's artifact folder to the run's storage after each experiment
checkpoint. The searcher's state is written there as a ``-tmp-`` file and renamed; when the copy
lists the folder between the two, it fails with FileNotFoundError on the temporary file and
Tune logs an ERROR with a full traceback ("Saving experiment state to storage ... failed"). Nothing
is lost: the renamed file is copied by the next sync (and the sweep's record is the observation
store, not Tune's state). A user reading that traceback at the end of a sweep would think it broke.

    >>> import logging
    >>> record = logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, "", 0,
    ...                            "Saving experiment state failed with exception: ", None,
    ...                            (FileNotFoundError, FileNotFoundError(2, "x/.abc-tmp-search_gen_state.json"), None))
    >>> SyncRaceFilter().filter(record), record.levelname, record.exc_info
    (True, 'WARNING', None)
"""
from __future__ import annotations

import logging

LOGGER = "ray.tune.execution.experiment_state"


class SyncRaceFilter(logging.Filter):
    """Turns Tune's sync error about a vanished ``-tmp-`` file into a one-line warning; any other record passes as is."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, FileNotFoundError) and "-tmp-" in str(exc):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = (f"{record.getMessage()}a temporary file of Tune's was renamed while it was being "
                          "copied; the next sync copies it (nothing of the sweep is lost)")
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


def install() -> None:
    """Add the filter to Tune's experiment-state logger (once per process)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(f, SyncRaceFilter) for f in logger.filters):
        logger.addFilter(SyncRaceFilter())
