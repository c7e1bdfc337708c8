"""How many trials fit at once: the machine's or Ray cluster's CPUs and GPUs against a spec's trials
(checked before a sweep writes anything; the cap on concurrent trials; the slots the summary measures against)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..config.spec import SpecError, SweepSpec
from ..core.planning.trial import PlannedTrial


def check_capacity(spec: SweepSpec, cpus: float, gpus: float, where: str = "this machine") -> None:
    """Every trial's workers fit the cluster at once (CPUs: workers x threads; GPUs: one per worker
    with use_gpu): otherwise Ray Tune waits for resources forever. Raises `SpecError`."""
    from ..config.trials import plan_grid

    workers = max((t.workers for t in plan_grid(spec)), default=1)
    need = workers * spec.resources.threads
    if need > cpus:
        raise SpecError(f"invalid spec\n  resources.threads: a trial needs {workers} worker(s) x "
                        f"{spec.resources.threads} thread(s) = {need} CPUs; {where} has {cpus:g}")
    if spec.resources.use_gpu and workers > gpus:
        raise SpecError(f"invalid spec\n  resources.use_gpu: a trial needs {workers} GPU(s); {where} has "
                        f"{gpus:g}" + ("" if gpus else " (set use_gpu: false, or run on a cluster with GPUs)"))


def _local_cpus() -> float:
    """CPUs this process may use, as Ray counts them: the affinity mask, capped by a cgroup quota."""
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cpus = float(os.cpu_count() or 1)
    try:  # cgroup v2: "max 100000" (no quota) or "<quota> <period>"
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1.0, float(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def local_capacity(gpus: bool = True) -> tuple[float, float]:
    """(CPUs, GPUs) a local Ray cluster started here would have; GPUs counted only when asked
    (counting imports Ray: seconds)."""
    cpus = _local_cpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not gpus or visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return cpus, 0.0
    try:  # Ray's own count (NVML), as `ray.init` would see it
        from ray._private.accelerators import get_accelerator_manager_for_resource

        n = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
        if visible:
            n = min(n, len([v for v in visible.split(",") if v.strip()]))
    except Exception:  # noqa: BLE001 -- a private API: fall back to the device files
        n = len([p for p in Path("/dev").glob("nvidia[0-9]*")])
    return cpus, float(n)


def ray_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) of the Ray cluster this process is connected to."""
    import ray

    have = ray.cluster_resources()
    return float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))


def max_concurrent_trials(spec: SweepSpec, trials: list[PlannedTrial]) -> int:
    import ray

    have = ray.cluster_resources()
    workers = max((t.workers for t in trials), default=1)
    fit = max(1, math.floor(have.get("CPU", 1.0) / (workers * spec.resources.threads)))
    if spec.resources.use_gpu:  # one GPU per worker: the GPUs bound it too
        fit = max(1, min(fit, math.floor(have.get("GPU", 0.0) / workers)))
    # Ray Tune cannot see the CPUs (GPUs) a TorchTrainer will ask for, so concurrency is capped
    # so that every running trial's workers fit at once (no trial waits on another's devices).
    return min(fit, spec.resources.max_concurrent or fit)


def trial_slots(spec: SweepSpec) -> int:
    """Concurrent trial slots of this sweep on the connected Ray cluster (1 without one)."""
    try:
        import ray

        from ..config.trials import plan_grid

        if ray.is_initialized():  # never start a cluster just to count its slots
            return max_concurrent_trials(spec, plan_grid(spec))
    except Exception:  # noqa: BLE001 -- no Ray cluster (a summary outside a run): the spec's cap or 1
        pass
    return spec.resources.max_concurrent or 1

