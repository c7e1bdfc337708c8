"""The Ray Tune function trainable that runs one trial.

One worker: the trainer runs inside the trial process and reports through `tune.report`.
A user's trainer (`backend: command` / `python`, docs/trainers.md): its program is launched and
tailed by `trainers.command` (several workers: one process each, torchrun-style, from the trial
process), its function called with a reporter that normalises each report to the contract
(`trainers.contract.normalise_report`) — on several workers inside Ray Train, as the built-in one.
Several workers: the trial process launches a Ray Train `TorchTrainer` (gang-scheduled
workers, gloo on CPU / NCCL on GPU) and Train's `TuneReportCallback` forwards rank 0's
reports to Tune (Ray 2.6x, Train V2: a TorchTrainer cannot be handed to the Tuner itself).
That hand-over is asynchronous, so rank 0 waits for the controller to acknowledge each report
as stored (`report_ack`) before training on, and a user's stop is agreed on by all ranks.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from trainers.contract import TrialConfig

from .envelope import TrialEnvelope


def _backend(env: TrialEnvelope):
    """The trainer backend: 'deepspeed' (real model) or 'simulated' (the spec's world)."""
    if env.backend == "simulated":
        from functools import partial

        from trainers.simulated import train
        from trainers.worlds import load_world

        return partial(train, world=load_world(env.world))
    from trainers.deepspeed_trainer import train

    return train


PID_FILE = "worker-{rank}.pid"  # in the trial's checkpoint dir: which process runs rank `rank`


def _reporter(env: TrialEnvelope, send, stopped=None):
    """`send` for every report, slowed by `report_delay_s` when the config asks (tests only), raising
    `StopRequested` after a report once the controller raised the stop flag `stop_key` (the user
    stopped the sweep; `stopped`: how to read it, default `stop_signal.Watcher`).

    Tune's function API reports synchronously: `send` returns once the controller has taken the
    report, so a checkpoint the trainer saves on `StopRequested` is at a recorded step. (On several
    workers `send` is `_train_report`, which waits for the store's acknowledgement, and `stopped`
    is `_agreed`: every rank stops at the same report.)
    """
    delay, key = env.report_delay_s, env.stop_key
    if delay <= 0 and not key:
        return send
    if key and stopped is None:
        from .stop_signal import Watcher

        stopped = Watcher(key)

    def report(metrics):
        send(metrics)
        if delay > 0:
            time.sleep(delay)
        if key and stopped():
            from trainers.contract import StopRequested

            raise StopRequested("the user stopped the sweep")

    return report


def _write_pid(cfg: TrialConfig, rank: int) -> None:
    """Record this process's pid next to the trial's checkpoints (operators, fault tests)."""
    if not cfg.checkpoint_dir:
        return
    folder = Path(cfg.checkpoint_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / PID_FILE.format(rank=rank)).write_text(f"{os.getpid()}\n")
    except OSError:
        pass  # informative only


def run_trial(config: dict[str, Any]) -> None:
    """Tune entry point: `config` is a `TrialEnvelope.to_config()` (the trial contract under "trial",
    and how to run it: backend, world, storage, use_gpu, max_failures, ...).

    Restarted after a crash (Tune's FailureConfig), it runs the same config again and the
    trainer resumes from the latest checkpoint in `trial.checkpoint_dir`.
    """
    from ray import tune

    from trainers.contract import StopRequested

    env = TrialEnvelope.from_config(config)
    cfg = env.trial
    try:
        if env.backend == "command" or (env.backend == "python" and cfg.workers == 1):
            _run_own(env, _reporter(env, lambda metrics: tune.report(dict(metrics))))
            return
        if cfg.workers == 1:
            _write_pid(cfg, 0)
            _backend(env)(cfg, _reporter(env, lambda metrics: tune.report(dict(metrics))))
            return
    except StopRequested:
        # The user stopped the sweep and the trainer saved its checkpoint: end without a final
        # report (the controller records the trial stopped-by-user; not an error Tune would retry).
        return
    _run_torch_trainer(env)


def _worker_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: the same trainer, inside Train's process group.

    A user's stop reaches every rank at the same report (`_agreed`): each saves its part of the
    checkpoint there (DeepSpeed: its ZeRO shards) and ends; the worker group then ends normally
    and the controller records the trial stopped-by-user, as a one-worker trial.
    """
    import ray.train

    from trainers.contract import StopRequested

    env = TrialEnvelope.from_config(config)
    rank = ray.train.get_context().get_world_rank()
    ack = stopped = None
    if env.stop_key:  # (set by the controller): a user's stop, agreed on; each stored report acknowledged
        from . import report_ack
        from .stop_signal import Watcher

        stopped = _agreed(Watcher(env.stop_key))
        if rank == 0:
            ack_key = report_ack.key(env.stop_key, env.trial_id)
            ack = lambda step: report_ack.wait_for(ack_key, step)  # noqa: E731
    reporter = _reporter(env, lambda metrics: _train_report(metrics, ack), stopped=stopped)
    try:
        if env.backend == "python":  # a user's function on every worker, in Train's process group
            _run_own(env, reporter)
            return
        _write_pid(env.trial, rank)
        _backend(env)(env.trial, reporter)
    except StopRequested:
        return  # every rank, at the same report: the checkpoint there is whole


def _agreed(watch):
    """The stop-flag reader `watch` (this rank's `stop_signal.Watcher`) made collective: every rank
    calls it after each report, so all read at the same report, and all see the flag up if any rank
    does (an all-reduce): every rank ends at the same step and their checkpoint shards match."""

    def stopped() -> bool:
        import torch
        import torch.distributed as dist

        up = bool(watch())
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return up
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1.0 if up else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    return stopped


def _train_report(metrics: dict[str, Any], ack=None) -> None:
    """`ray.train.report` that returns once every rank's report of this round has reached Train's
    controller and, with `ack` (rank 0: `report_ack.wait_for` of the trial), the sweep's store.

    Train forwards a round only when it holds every rank's report, and its workers' `report`
    returns as soon as the report is queued in the worker. A rank killed with its report still
    queued loses the round, while rank 0 may already have checkpointed past it: the restart
    would resume after a step that was never recorded (a gap in the store). So each rank waits
    until the controller has taken its report (its queue drained). Train's controller then hands
    rank 0's report on to Tune asynchronously, so rank 0 also waits until the controller of the
    sweep has stored it (`ack(step)`, bounded). Then all ranks meet at a barrier: a checkpoint
    written after this covers only steps the store holds.
    """
    import ray.train

    ray.train.report(dict(metrics))
    try:  # Ray internals (2.6x, Train V2): without them, only the barrier below remains
        from ray.train.v2._internal.execution.context import get_train_context

        get_train_context().get_result_queue().join()  # task_done when the controller polled it
    except (ImportError, AttributeError):
        pass
    if ack is not None and "step" in metrics:
        ack(int(metrics["step"]))
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _run_torch_trainer(env: TrialEnvelope) -> None:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    _pin_cluster_address()
    cfg, use_gpu = env.trial, env.use_gpu
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config=env.to_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.threads, **({"GPU": 1} if use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"train-{cfg.trial_id}",
            storage_path=env.storage or os.path.abspath("ray_train"),
            callbacks=[TuneReportCallback()],
            # A dead worker: Train restarts the worker group, which resumes from the
            # trial's latest checkpoint; when that is exhausted Tune restarts the trial.
            failure_config=ray.train.FailureConfig(max_failures=env.max_failures),
        ),
    )
    trainer.fit()


def _pin_cluster_address() -> None:
    """Make Ray Train's helper actors talk to this trial's cluster.

    Train V2's placement-group cleaner finds the cluster through the State API; on a machine
    running several Ray instances it cannot tell which one without RAY_ADDRESS, and then a
    finished trial's workers keep their CPUs and the next multi-worker trial waits forever.
    """
    import ray

    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)
    try:  # propagated to Train's controller actor (and so to the cleaner it starts)
        from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

        ENV_VARS_TO_PROPAGATE.add("RAY_ADDRESS")
    except (ImportError, AttributeError):  # a Ray version without it: best effort only
        pass


def _forward(metrics: dict[str, Any]) -> dict[str, Any]:
    """A normalised report as a Tune result: extras ride under `extra` (MLflow logs them)."""
    return {k: v for k, v in metrics.items() if k != "extra" or v}


def _stop_requested() -> bool:
    """Whether Tune asked this trial to stop (its session's stop event), without waiting for a report.

    A stopped function trainable learns of it only at its next `report`; a program between
    reports is stopped at once through this (Ray internals, so any failure reads as 'no').
    """
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        return bool(session is not None and session.stop_event.is_set())
    except Exception:  # noqa: BLE001
        return False


def _run_own(env: TrialEnvelope, send) -> None:
    """A user's trainer: `command` (a program per attempt) or `python` (a function called here)."""
    from trainers.contract import normalise_report

    cfg, own = env.trial, env.own
    n_params = float(env.N or cfg.n_params)
    run_dir = Path(env.run_dir)
    if env.backend == "command":
        from trainers.command import CommandSettings, run_command, split_command

        settings = CommandSettings(command=tuple(split_command(own["command"])), cwd=own["cwd"],
                                   env=tuple(sorted((own.get("env") or {}).items())),
                                   grace_s=float(own["grace_period_s"]),
                                   first_report_timeout_s=float(own["first_report_timeout_s"]),
                                   warm_start=tuple(own.get("warm_start") or ()))
        # A stopped trial's program gets `grace_s` to exit after SIGTERM; Tune waits only
        # TUNE_FUNCTION_THREAD_TIMEOUT_S (2 s) for this thread before reusing the process for the
        # next trial, and fails that trial if it is still running. Read in this process at reset.
        os.environ["TUNE_FUNCTION_THREAD_TIMEOUT_S"] = str(int(settings.grace_s + 10))
        run_command(cfg, lambda m: send(_forward(m)), settings, run_dir, n_params, should_stop=_stop_requested,
                    run_mirror=env.run_mirror)
        return
    from trainers.checkpoint_mirror import mirrored
    from trainers.entrypoint import load_entrypoint

    # with the store on S3, its checkpoint folder comes from the bucket and goes back to it
    fn = mirrored(load_entrypoint(own["entrypoint"], own["cwd"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    rank = _train_rank() if cfg.workers > 1 else 0
    (run_dir / ("pid" if rank == 0 else f"pid-rank{rank}")).write_text(f"{os.getpid()}\n")

    last: dict[str, Any] = {}

    def report(metrics: dict[str, Any]) -> None:
        r = normalise_report(metrics, cfg.tokens, n_params)
        last.update(r)
        send(_forward(r))

    fn(cfg, report)
    if not last or last["done"] < 1.0:
        from trainers.contract import ContractError, StopRequested

        from .stop_signal import flag_raised

        if env.stop_key and flag_raised(env.stop_key):
            raise StopRequested("the user stopped the sweep")  # the function caught it and returned: still a stop

        raise ContractError(f"trial {cfg.trial_id}: {own['entrypoint']} returned after step "
                            f"{int(last['step']) if last else None} without its final report (done, or {cfg.tokens} tokens)")


def _train_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()
