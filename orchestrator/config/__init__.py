"""The user's spec and the boundary between it and the pure core's frozen configs.

- `spec`: the pydantic spec (the user's YAML, validated: `SweepSpec`, `load_spec`, `parse_spec`);
- `planning`: the spec's design (`core.planning.design.Design`) and the search's knobs (`SearchConfig`);
- `fitting`: the spec's fit settings as `core.proposals.fit_and_propose` keywords (`fit_settings`);
- `pruning`: the pruning rules' config, a trial's `TrialMeta` from its contract config, a resumed
  sweep's pruning history from the store;
- `sizing`: a spec's trials sized against the memory model before any grid is planned (the load checks);
- `trials`: a spec's grid and trials (`plan_grid`, `plan_trial`, resources, `trial_config`: the
  trainer contract's view of a planned trial);
- `planners`: the planner a spec asks for (`make_planner`: `GridPlanner`, `LawGuidedPlanner` on its design).

The core never sees the spec: every conversion happens here, once. Import the modules directly.
"""
