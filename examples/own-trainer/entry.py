"""The same training as train_lm.py, as a Python entrypoint (`trainer.backend: python`).

scalesweep calls `train(config, report)` inside the trial with a `trainers.contract.TrialConfig`
and a reporter; a stop (the pruner) arrives as SystemExit from `report`, so nothing else is needed.
"""
from train_lm import run  # this file's folder is on sys.path when loaded as 'path/entry.py:train'


def train(config, report) -> None:
    run(config.to_dict(), report)
