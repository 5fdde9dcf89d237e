"""Known devices for `scaletrain plan`: memory, peak matmul throughput and link bandwidth.

GPU figures are the vendors' datasheet numbers (dense, no sparsity) for the SXM parts; they were
not measured by this project (no GPU was available). `cpu` is this machine: its matmul peak is
measured (scaletrain.hardware, cached), its memory read from the OS. A plan reaches a
fraction of a peak only; `efficiency` is the model-FLOPs utilization the plan assumes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Device:
    name: str
    memory_bytes: int  # per rank (one GPU, or this host's memory shared by its ranks)
    peak_flops: dict  # precision -> dense matmul FLOP/s ("fp32", "bf16")
    link_bytes_per_s: float  # per-direction bandwidth between ranks of one node (collectives)
    host_link_bytes_per_s: float  # device <-> host (CPU offload traffic)
    efficiency: float  # achievable fraction of the peak for a transformer step (assumed)
    kind: str = "cuda"


GB = 10**9

KNOWN_DEVICES: dict[str, Device] = {
    # NVIDIA H100 SXM5: 80 GB HBM3; 989 TFLOP/s bf16 dense, 67 fp32 (tf32 tensor cores 494);
    # NVLink 4 900 GB/s total = 450 GB/s per direction; PCIe 5 x16 ~64 GB/s per direction.
    "h100": Device("h100", 80 * GB, {"bf16": 989e12, "fp32": 67e12}, 450 * GB, 64 * GB, 0.4),
    # H200 SXM: the H100's compute with 141 GB HBM3e; same NVLink 4 and PCIe 5.
    "h200": Device("h200", 141 * GB, {"bf16": 989e12, "fp32": 67e12}, 450 * GB, 64 * GB, 0.4),
    # A100 SXM4 80 GB: 312 TFLOP/s bf16 dense, 19.5 fp32; NVLink 3 600 GB/s = 300 per direction.
    "a100": Device("a100", 80 * GB, {"bf16": 312e12, "fp32": 19.5e12}, 300 * GB, 32 * GB, 0.4),
}

# gloo all-reduce between 2 local ranks over loopback measured ~1-2 GiB/s on a 2-core CPU machine
# (benchmarks/scaling.py records it as gloo_bus_bandwidth_bytes_per_second); 1.5e9 is the middle.
CPU_LINK_BYTES_PER_S = 1.5e9
# The main job measured 0.53 MFU against the fp32 matmul peak (README); small models reach less.
CPU_EFFICIENCY = 0.5


def this_cpu(threads: int | None = None) -> Device:
    """This machine as a device: measured fp32/bf16 matmul peaks and its memory."""
    import torch

    from scaletrain import hardware
    from scaletrain.diagnose.doctor import host_memory_bytes

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        peaks = {"fp32": hardware.matmul_peak_flops(torch.float32, "cpu"),
                 "bf16": hardware.matmul_peak_flops(torch.bfloat16, "cpu")}
    finally:
        torch.set_num_threads(before)
    return Device("cpu", host_memory_bytes(), peaks, CPU_LINK_BYTES_PER_S, float("inf"), CPU_EFFICIENCY,
                  kind="cpu")


def get_device(name: str | None, threads: int | None = None) -> Device:
    from scaletrain.errors import UserError

    if name in (None, "cpu"):
        return this_cpu(threads)
    key = name.lower()
    if key not in KNOWN_DEVICES:
        raise UserError(f"--device: unknown device {name!r}; known: cpu, {', '.join(sorted(KNOWN_DEVICES))}")
    return KNOWN_DEVICES[key]


def with_memory(device: Device, memory_bytes: int | None) -> Device:
    return device if memory_bytes is None else replace(device, memory_bytes=memory_bytes)
