"""Learning-rate schedules: linear warmup, then WSD, cosine or constant.

Step s is the 0-based index of the optimizer step about to be taken; with W = round(warmup·T)
warmup steps, steps s < W use lr = peak·(s+1)/W. After warmup:
- wsd: the peak until the last K = round(decay·T) steps, which decay with the **1-sqrt** shape
  (Hägele et al. 2024): lr = f + (peak − f)·(1 − sqrt(p)), p = (s − (T−K) + 1)/K ∈ (0, 1],
  where f = final_lr_frac·peak — so the last step runs at f exactly;
- cosine: lr = f + (peak − f)·(1 + cos(π·p))/2, p = (s − W + 1)/(T − W), ending at f;
- constant: the peak.
"""
from __future__ import annotations

import numpy as np

from trainers.contract import Schedule


def lr_array(total_steps: int, peak_lr: float, schedule: Schedule) -> np.ndarray:
    """The lr used at every step 0..total_steps-1 (float64)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    t = total_steps
    s = np.arange(t, dtype=np.float64)
    floor = schedule.final_lr_frac * peak_lr
    warm = min(t, int(round(schedule.warmup * t)))
    lr = np.full(t, float(peak_lr))
    if schedule.kind == "wsd":
        k = min(t - warm, int(round(schedule.decay * t)))
        if k > 0:
            p = (s[t - k:] - (t - k) + 1.0) / k
            lr[t - k:] = floor + (peak_lr - floor) * (1.0 - np.sqrt(p))
    elif schedule.kind == "cosine":
        if t > warm:
            p = (s[warm:] - warm + 1.0) / (t - warm)
            lr[warm:] = floor + (peak_lr - floor) * 0.5 * (1.0 + np.cos(np.pi * p))
    elif schedule.kind != "constant":
        raise ValueError(f"unknown schedule kind {schedule.kind!r}")
    if warm > 0:
        lr[:warm] = peak_lr * (s[:warm] + 1.0) / warm
    return lr


def lr_at(step: int, total_steps: int, peak_lr: float, schedule: Schedule) -> float:
    """The lr at one step (same rule as `lr_array`, without building the array)."""
    if not 0 <= step < total_steps:
        raise ValueError(f"step {step} outside 0..{total_steps - 1}")
    t = total_steps
    floor = schedule.final_lr_frac * peak_lr
    warm = min(t, int(round(schedule.warmup * t)))
    if step < warm:
        return peak_lr * (step + 1.0) / warm
    if schedule.kind == "wsd":
        k = min(t - warm, int(round(schedule.decay * t)))
        if k > 0 and step >= t - k:
            p = (step - (t - k) + 1.0) / k
            return floor + (peak_lr - floor) * (1.0 - float(np.sqrt(p)))
        return float(peak_lr)
    if schedule.kind == "cosine":
        p = (step - warm + 1.0) / (t - warm)
        return floor + (peak_lr - floor) * 0.5 * (1.0 + float(np.cos(np.pi * p)))
    if schedule.kind == "constant":
        return float(peak_lr)
    raise ValueError(f"unknown schedule kind {schedule.kind!r}")
