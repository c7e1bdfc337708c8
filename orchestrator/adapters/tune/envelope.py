"""The Tune trial envelope: what one Tune trial's config carries, as one typed value.

Tune holds a trial's config as a plain dict (it resolves search spaces in it, pickles it with the
experiment state, logs it), so the envelope crosses the Tune boundary as ``to_config()`` and is read
back with ``from_config()``; the controller builds one per planned trial and the trainable reads it.
The trial itself is the trainer contract's `TrialConfig` (``config["trial"]``, a plain dict inside
Tune). The callback and the scheduler read a Tune trial's config with `envelope_of` and its id with
`trial_id_of`. No Ray here.

>>> from trainers.contract import TrialConfig
>>> env = TrialEnvelope(TrialConfig("t1", n_params=10_000, tokens=40_960, lr=1e-3, batch_tokens=1024),
...                     backend="simulated", world="tiny", cell_D=40_000.0)
>>> env.trial_id, env.D, env.lr, env.batch, env.seed
('t1', 40960, 0.001, 1024, 0)
>>> TrialEnvelope.from_config(env.to_config()) == env
True
>>> envelope_of(env.to_config()).D, envelope_of({"lr": 0.1})  # a trial of a Tuner not ours: None
(40960, None)
>>> trial_id_of(env.to_config()), trial_id_of({"trial": {"trial_id": "t1"}}), envelope_of({"trial": {"trial_id": "t1"}})
('t1', 't1', None)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from trainers.contract import TrialConfig


@dataclass(frozen=True)
class TrialEnvelope:
    """One Tune trial: the trainer contract's trial and how the trial process runs it."""

    trial: TrialConfig  # N (target), D, lr, batch, seed, schedule, workers, ... (trainers.contract)
    backend: str = "deepspeed"  # the spec's trainer.backend: deepspeed | simulated | command | python
    world: Optional[Any] = None  # simulated backend: a bundled world name or a world YAML path
    storage: Optional[str] = None  # Ray Train's storage path for a multi-worker trial
    use_gpu: bool = False
    max_failures: int = 0  # Ray Train restarts of a multi-worker trial's worker group
    cell_D: Optional[float] = None  # the nominal D of the trial's cell (whatever batch rounding did to D)
    own: Optional[Mapping[str, Any]] = None  # a user's trainer: how to run it (controller.own_trainer_settings)
    run_dir: Optional[str] = None  # a user's trainer: where its attempts' files go
    run_mirror: Optional[str] = None  # a command trainer, store on S3: where its attempts' folders are copied
    N: Optional[float] = None  # a user's trainer: the realised non-embedding parameters (else trial's target)
    report_delay_s: float = 0.0  # fault-injection tests only: each report sleeps this long
    stop_key: Optional[str] = None  # a user's stop (tune.stop_signal): the trial checkpoints after its next report and ends
    branch_of: Optional[str] = None  # a WSD branch: its trunk's trial id (the pruner judges it with the trunk's early curve)

    @property
    def trial_id(self) -> str:
        """The contract's trial id."""
        return self.trial.trial_id

    @property
    def D(self) -> int:
        """Training tokens."""
        return self.trial.tokens

    @property
    def lr(self) -> float:
        """Peak learning rate."""
        return self.trial.lr

    @property
    def batch(self) -> int:
        """Global batch in tokens."""
        return self.trial.batch_tokens

    @property
    def seed(self) -> int:
        """The trial's seed."""
        return self.trial.seed

    def to_config(self) -> dict[str, Any]:
        """The plain dict Tune holds (keys a user's trainer does not use are left out, as before)."""
        out: dict[str, Any] = {"trial": self.trial.to_dict(), "backend": self.backend, "world": self.world,
                               "storage": self.storage, "use_gpu": self.use_gpu, "max_failures": self.max_failures,
                               "cell_D": self.cell_D}
        if self.own is not None:
            out.update(own=dict(self.own), run_dir=self.run_dir, N=self.N)
            if self.run_mirror:
                out["run_mirror"] = self.run_mirror
        if self.report_delay_s:
            out["report_delay_s"] = self.report_delay_s
        if self.stop_key:
            out["stop_key"] = self.stop_key
        if self.branch_of:
            out["branch_of"] = self.branch_of
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TrialEnvelope":
        """Inverse of `to_config`; a hand-written config (``{"trial": ..., "backend": "simulated"}``) takes the defaults."""
        trial = config["trial"]
        return cls(trial=trial if isinstance(trial, TrialConfig) else TrialConfig.from_dict(trial),
                   backend=config.get("backend") or "deepspeed", world=config.get("world"),
                   storage=config.get("storage"), use_gpu=bool(config.get("use_gpu", False)),
                   max_failures=int(config.get("max_failures") or 0), cell_D=config.get("cell_D"),
                   own=config.get("own"), run_dir=config.get("run_dir"), run_mirror=config.get("run_mirror"),
                   N=config.get("N"),
                   report_delay_s=float(config.get("report_delay_s") or 0.0), stop_key=config.get("stop_key"),
                   branch_of=config.get("branch_of"))


def trial_id_of(config: Any) -> Optional[str]:
    """The contract's trial id in a Tune trial's config (an ended trial's too, whose config `tune.forget`
    shrank to the id); None when there is none."""
    trial = config.get("trial") if isinstance(config, Mapping) else None
    if isinstance(trial, TrialConfig):
        return trial.trial_id
    return str(trial["trial_id"]) if isinstance(trial, Mapping) and trial.get("trial_id") else None


def envelope_of(config: Any) -> Optional[TrialEnvelope]:
    """The envelope of a Tune trial's config; None when it carries no trial contract under ``"trial"`` (a
    trial of a user's own Tuner that is not a scalesweep trial) or only its id (an ended trial, `tune.forget`)."""
    trial = config.get("trial") if isinstance(config, Mapping) else None
    if isinstance(trial, TrialConfig) or (isinstance(trial, Mapping) and set(trial) - {"trial_id"}):
        return TrialEnvelope.from_config(config)
    return None


__all__ = ["TrialEnvelope", "envelope_of", "trial_id_of"]
