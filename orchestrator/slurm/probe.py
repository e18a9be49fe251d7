"""All-reduce bandwidth between the nodes of an allocation, and the GPUs' health:
`srun --ntasks-per-node=1 python -m orchestrator.slurm.probe --master-addr A --master-port P`.

Run by `orch doctor` inside an allocation. Rank 0 prints one JSON line with the bus bandwidth
(the nccl-tests definition: bytes x 2(n-1)/n / time), so a slow or misconfigured interconnect
shows up before the job, not an hour into it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time


def bus_bandwidth_gbps(size_bytes: int, world: int, seconds: float) -> float:
    return size_bytes * 2 * (world - 1) / world / seconds / 1e9 if world > 1 else 0.0


def gpu_health() -> list[str]:
    """Problems nvidia-smi reports (uncorrected ECC errors, throttling temperature); empty when healthy or no GPU."""
    query = ["nvidia-smi", "--query-gpu=index,temperature.gpu,ecc.errors.uncorrected.volatile.total", "--format=csv,noheader,nounits"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    problems = []
    for line in out.strip().splitlines():
        index, temperature, ecc = (part.strip() for part in line.split(","))
        if ecc not in ("0", "[N/A]", "N/A"):
            problems.append(f"GPU {index}: {ecc} uncorrected ECC errors")
        if temperature.isdigit() and int(temperature) >= 85:
            problems.append(f"GPU {index}: {temperature} C")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--master-addr", required=True)
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=5)
    args = parser.parse_args()
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("SLURM_LOCALID", 0)))
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://{args.master_addr}:{args.master_port}", rank=rank, world_size=world)
    tensor = torch.ones(args.megabytes * 2**20 // 4, device="cuda" if cuda else "cpu")
    dist.all_reduce(tensor)  # warm-up: connections are set up here
    if cuda:
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(args.iterations):
        dist.all_reduce(tensor)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - tic) / args.iterations
    problems = [p for node in _gather(gpu_health(), world) for p in node]
    if rank == 0:
        print(json.dumps({"world_size": world, "bus_gbps": bus_bandwidth_gbps(tensor.numel() * 4, world, seconds), "gpu_problems": problems}))
    dist.destroy_process_group()


def _gather(value, world: int) -> list:
    import torch.distributed as dist

    out = [None] * world
    dist.all_gather_object(out, value)
    return out


if __name__ == "__main__":
    main()
