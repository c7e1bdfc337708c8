"""Where a sweep's data lives: the observation store (Parquet, the source of truth) and its tracking.

- `store`: `ObservationStore`, append-only Parquet tables of trials and reports, and the rows the
  fits, the search and the pruner read back (`final_points`, `ended_trials`, ...);
- `store_location`: where the store is (a local directory or an fsspec URI) and its checks;
- `tracking/`: MLflow (parent run = sweep, child run = trial): typed operations, queue, spool, sink,
  the `SweepTracker` facade and `read_sweep_runs`.

Imports the core and the trial contract, never Ray nor the app. Import the modules directly.
"""
