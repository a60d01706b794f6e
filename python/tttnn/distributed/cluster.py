"""Joining a Ray cluster, or starting a local one, with token authentication kept on.

- `address=None`: a local cluster on this machine, started with explicit (logical) CPU and GPU
  counts, so that actors with explicit `num_cpus` cannot deadlock a small machine. Ray (2.59+)
  generates a token for it and saves it to `~/.ray/auth_token`.
- `address="auto"` or `"HOST:6379"`: an existing cluster. Its token is read the way Ray reads it
  (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`).

Nothing here turns authentication off, ships a token, or opens the dashboard: a local cluster
runs without one, and `docs/distributed.md` shows how to start a head node and join workers with
the token.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Optional

__all__ = ["RAY_MISSING", "SCHEDULE_TIMEOUT", "connect", "local_gpus", "require_ray", "session"]

RAY_MISSING = "this needs Ray: pip install 'tttnn[ray]'"

SCHEDULE_TIMEOUT = 600.0
"""Seconds an actor may take to be placed and started (its model load does not count). A worker
of a build or an evaluation is then given up (`tttnn.distributed.pool`): its work goes to the
other workers, and when none is left the job stops with an error (what it wrote is kept; rerun
with --resume). Shard actors that are not all up by then stop the search with an error. An
autoscaling cluster adds a node well within it; a cluster that lacks the resources never places
the actor."""


def require_ray() -> Any:
    """The `ray` module, or a clear error naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    return ray


def connect(
    address: Optional[str] = None,
    *,
    num_cpus: Optional[float] = None,
    num_gpus: Optional[int] = None,
) -> bool:
    """Connect this process to Ray; returns True when this call started or joined the cluster
    (so the caller shuts it down), False when Ray was already initialised here."""
    ray = require_ray()
    if ray.is_initialized():
        return False
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        raise RuntimeError(
            "RAY_AUTH_MODE=disabled: tttnn does not run Ray clusters without token "
            "authentication (anyone who reaches the cluster could run code on it); unset it"
        )
    kw: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address is None:
        kw["address"] = "local"  # a new cluster: never join one another process started here
        kw["num_cpus"] = int(num_cpus) if num_cpus is not None else (os.cpu_count() or 1)
        kw["num_gpus"] = num_gpus if num_gpus is not None else local_gpus()
    else:
        kw["address"] = address
    ray.init(**kw)
    return True


@contextlib.contextmanager
def session(address: Optional[str] = None, **kw: Any) -> Iterator[Any]:
    """`connect` for the length of a `with` block; shuts down only what it started."""
    ray = require_ray()
    started = connect(address, **kw)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0
