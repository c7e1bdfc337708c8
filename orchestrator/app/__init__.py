"""The application: what a user runs and asks (docs/architecture.md).

`session` runs and resumes a sweep (the Ray Tune driver), `query` answers status, fit, proposals and
laws (the one path the CLI, the HTTP API, the sweep's summary and the benchmarks use), `cli/` is the
`scalesweep` command, `api/` the HTTP API, `submit` sends a sweep to a Ray cluster as a job, `report`
and `plots/` render a sweep, `replay` runs a planner against a recorded table. The app may import
every layer below it: `orchestrator.adapters`, `orchestrator.io`, `orchestrator.config`, `orchestrator.core`.
"""
