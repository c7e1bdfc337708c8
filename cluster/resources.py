"""Per-trial resource planning (memory and throughput model → ZeRO stage, workers, micro-batch,
gradient accumulation, cost): moved to the pure core, `orchestrator.core.resources`, whose module
docstring gives the accounting; re-exported here for deployment code and older imports.
"""
from __future__ import annotations

from orchestrator.core.resources import (BF16, DEVICES, FP32, GB, GPT_ACT_PER_LAYER, PRECISIONS,  # noqa: F401
                                         Auto, DeviceSpec, GiB, Kind, MemoryBreakdown, ModelDims, Precision,
                                         ResourceError, ResourcePlan, Throughput, ZeroBuffers, activation_bytes,
                                         cpu_device, default_precision, llama_act_per_layer, machine_memory_bytes,
                                         memory_breakdown, model_state_bytes, plan_resources, throughput,
                                         with_measured_throughput, zero_buffer_bytes)
