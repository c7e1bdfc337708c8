"""Ray Tune's experiment-state sync racing its own temporary file is one warning line, not a
traceback; any other sync failure keeps its traceback (orchestrator.adapters.tune.sync_race)."""
from __future__ import annotations

import io
import logging

import pytest

from orchestrator.adapters.tune import sync_race


def _logged(exc: BaseException) -> str:
    logger = logging.getLogger(sync_race.LOGGER)
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    try:
        sync_race.install()
        sync_race.install()  # once per process, however often the controller runs
        assert sum(isinstance(f, sync_race.SyncRaceFilter) for f in logger.filters) == 1
        try:
            raise exc
        except BaseException:
            # as Tune logs it (ray/tune/execution/experiment_state.py, wait_for_sync)
            logger.error("Saving experiment state to storage at '/x/ray/sweep' failed with exception: ", exc_info=True)
    finally:
        logger.removeHandler(handler)
    return out.getvalue()


def test_the_vanished_temporary_file_is_one_warning_line():
    text = _logged(FileNotFoundError(2, "Failed to open local file '/tmp/ray/a/.c3-tmp-search_gen_state-1.json'"))
    assert text.startswith("WARNING Saving experiment state") and "nothing of the sweep is lost" in text
    assert "Traceback" not in text and text.count("\n") == 1


@pytest.mark.parametrize("exc", [FileNotFoundError(2, "no such bucket"), PermissionError(13, "denied")])
def test_other_sync_failures_keep_their_traceback(exc):
    text = _logged(exc)
    assert text.startswith("ERROR Saving experiment state") and "Traceback" in text
