"""Exit without the interpreter's last garbage collections.

When a Python process ends, the interpreter collects every reference cycle still alive before it
exits. In a process that imported Ray, Tune, torch, MLflow or FastAPI that pass walks millions of
objects: measured 4-10 s on 2 busy cores in a stopped sweep's controller (`py-spy dump --native`:
`gc_collect_main` after the last atexit handler), and seconds more in the MLflow helper and the
API's supervisor, all of it spent after the sweep's record was complete. Freezing the heap
(`gc.freeze`) as the last atexit handler skips that pass: atexit handlers still run (Ray's
shutdown, MLflow's, logging's), threads are still joined, objects that are not in a cycle are still
freed; only cycles that would be freed at the very end are left to the operating system.
"""
from __future__ import annotations

import atexit
import gc


def skip_final_gc() -> None:
    """Leave the process's last garbage collections out of its exit. Call it first thing in a
    process's entry point: atexit handlers run in reverse order, so this one runs last.

    >>> skip_final_gc()  # in a test process: harmless, it only freezes the heap at exit
    """
    atexit.register(gc.freeze)
