"""Which device a Ray worker runs on.

Ray gives an actor that asks for GPUs (`num_gpus`) GPUs of its own and, unless told not to
(`RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES`), hides the others: `CUDA_VISIBLE_DEVICES` lists
only its own, so inside the actor the first of them is `cuda:0` whatever its number on the
machine. An actor that asks for no GPU sees none. So a device index set for the job (`--device
cuda:3`) names a GPU of the machine the job was started from, not one of the worker's: a worker
runs on the GPU Ray gave it, and a job on CUDA has its workers ask for GPUs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Optional, Union

from tttnn.config import RayConfig

__all__ = ["actor_device", "is_cuda", "with_worker_gpus", "worker_device"]


def is_cuda(device: Optional[str]) -> bool:
    """Whether the device setting names a CUDA device (`cuda`, `cuda:N`)."""
    return device is not None and device.strip().split(":")[0] == "cuda"


def with_worker_gpus(rc: RayConfig, device: Optional[str]) -> RayConfig:
    """`rc` with one GPU per worker when the job runs on CUDA and its workers ask for none (a
    worker that asks Ray for no GPU sees none); otherwise `rc` as it is."""
    if is_cuda(device) and rc.gpus_per_worker <= 0:
        return dataclasses.replace(rc, gpus_per_worker=1.0)
    return rc


def worker_device(
    configured: Optional[str], gpu_ids: Sequence[Union[int, str]], visible: Optional[str]
) -> str:
    """The torch device of a worker whose job asked for `configured` (None: CUDA when the
    worker has a GPU, else the CPU), given the GPUs Ray assigned to it (`ray.get_gpu_ids()`, in
    the machine's numbering) and its `CUDA_VISIBLE_DEVICES` (`visible`; None when Ray leaves it
    unset and the worker sees every GPU): the first assigned GPU, numbered as the worker sees
    it. A configured device of another kind (`cpu`) is kept."""
    if configured is not None and not is_cuda(configured):
        return configured
    if not gpu_ids:
        if configured is None:
            return "cpu"
        raise ValueError(
            f"device {configured} asked, but this Ray worker was given no GPU (--gpus-per-worker)"
        )
    first = str(gpu_ids[0])
    if visible is None:  # every GPU visible, in the machine's numbering
        return f"cuda:{first}"
    listed = [v.strip() for v in visible.split(",")]
    return f"cuda:{listed.index(first) if first in listed else 0}"


def actor_device(configured: Optional[str]) -> str:
    """`worker_device` inside the running Ray actor."""
    import ray

    return worker_device(configured, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
