"""Joining a Ray cluster, or starting a local one, with token authentication kept on; the package
every worker runs; and the requests that no node of the cluster can hold.

- `address=None`: a local cluster on this machine, started with explicit (logical) CPU and GPU
  counts, so that actors with explicit `num_cpus` cannot deadlock a small machine, and bound to
  the loopback interface: its GCS, raylet and workers listen on 127.0.0.1 only, so no other
  machine can reach it. Ray (2.59+) turns token authentication on for it and saves its token to
  `~/.ray/auth_token`.
- `address="auto"` or `"HOST:PORT"`: an existing cluster. Its token is read the way Ray reads it
  (`RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`). An address at which
  nothing accepts a connection within `CONNECT_TIMEOUT` is an error at once (Ray itself retries
  for minutes). The job ships this process's tttnn package to its workers (`ship_env`).

Authentication. `RAY_AUTH_MODE` must be unset (Ray then decides as above) or `token` (in any
case: the one value Ray reads as on; every other value, `off`, `0`, `""`, `" token"`, turns it
off). After connecting, this process must be in token mode: a cluster that let it in without a
token runs without authentication, and tttnn refuses it. Nothing here ships or prints a token,
or opens the dashboard; `docs/distributed.md` shows how to start a head node and join workers
with the token.

The same package. A worker must run the driver's tttnn: the same version and the same build of
the Rust core (`package_identity`); `tttnn.distributed.pool` refuses a worker that does not.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

__all__ = [
    "CONNECT_TIMEOUT", "RAY_MISSING", "SCHEDULE_TIMEOUT", "ClusterSettingError", "check_auth_mode",
    "check_fits", "check_same_package", "connect", "local_gpus", "package_identity", "require_ray", "session",
    "ship_env", "token_mode",
]  # fmt: skip

RAY_MISSING = "this needs Ray: pip install 'tttnn[ray]'"

SCHEDULE_TIMEOUT = 600.0
"""Seconds an actor may take to be placed and started (its model load does not count). A worker
of a build or an evaluation is then given up (`tttnn.distributed.pool`): its work goes to the
other workers, and when none is left the job stops with an error (what it wrote is kept; rerun
with --resume). Shard actors that are not all up by then stop the search with an error. An
autoscaling cluster adds a node well within it. A request that no node of the cluster can hold,
and no node group of its autoscaler either, is an error before any actor is asked for
(`check_fits`): only a cluster that is busy, or still growing, is waited for."""

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for the head node of `--address` to accept a connection before giving up."""

LOOPBACK = "127.0.0.1"
AUTH_MODE = "RAY_AUTH_MODE"


class ClusterSettingError(ValueError):
    """A Ray setting that cannot work: `RAY_AUTH_MODE` not token, an address where no cluster
    answers, workers larger than every node (the command line's usage error, exit 2)."""


def require_ray() -> Any:
    """The `ray` module, or a clear error naming the extra that provides it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    return ray


def token_mode(value: Optional[str]) -> bool:
    """Whether Ray reads `RAY_AUTH_MODE=value` as token authentication: `token` in any case,
    nothing else (Ray compares the lower-cased value with "token"; spaces count)."""
    return value is not None and value.lower() == "token"


def check_auth_mode() -> None:
    """Refuse a `RAY_AUTH_MODE` that turns Ray's token authentication off (anything set that
    is not `token`)."""
    value = os.environ.get(AUTH_MODE)
    if value is not None and not token_mode(value):
        raise ClusterSettingError(
            f"{AUTH_MODE}={value!r} turns Ray's token authentication off (anyone who reaches "
            "the cluster could run code on it); tttnn runs Ray only with it on: unset "
            f"{AUTH_MODE} or set it to token"
        )


def connect(
    address: Optional[str] = None,
    *,
    num_cpus: Optional[float] = None,
    num_gpus: Optional[int] = None,
) -> bool:
    """Connect this process to Ray; returns True when this call started or joined the cluster
    (so the caller shuts it down), False when Ray was already initialised here (whoever
    started it, this process's `RAY_AUTH_MODE` must not turn authentication off)."""
    ray = require_ray()
    check_auth_mode()
    if ray.is_initialized():
        return False
    kw: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
    if address is None:
        kw["address"] = "local"  # a new cluster: never join one another process started here
        kw["num_cpus"] = int(num_cpus) if num_cpus is not None else (os.cpu_count() or 1)
        kw["num_gpus"] = num_gpus if num_gpus is not None else local_gpus()
        with _loopback_node(ray):
            context = ray.init(**kw, _node_ip_address=LOOPBACK)
        where = f"the local cluster ({context.address_info['gcs_address']})"
        if context.address_info["node_ip_address"] != LOOPBACK:
            ray.shutdown()
            raise RuntimeError(
                f"Ray started {where} on {context.address_info['node_ip_address']}, not on "
                f"{LOOPBACK} alone; stopped it (this Ray version is not supported)"
            )
    else:
        if address.strip().lower() == "local":
            raise ClusterSettingError(
                "--address local: leave --address out to start a local cluster"
            )
        _check_reachable(address)
        kw["address"] = address
        kw["runtime_env"] = ship_env()
        where = f"the cluster at {address}"
        try:
            ray.init(**kw)
        except ray.exceptions.AuthenticationError as e:
            raise ClusterSettingError(f"{where} refused this process: {e}") from None
    if not token_mode(os.environ.get(AUTH_MODE)):
        ray.shutdown()
        raise ClusterSettingError(
            f"{where} let this process in without a token: it runs without Ray's token "
            "authentication, which tttnn does not use; start it with RAY_AUTH_MODE=token "
            "(docs/distributed.md)"
        )
    return True


@contextlib.contextmanager
def _loopback_node(ray: Any) -> Iterator[None]:
    """Ray gives a new node the loopback address only while it believes it runs on a single
    machine (the switch `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` sets when Ray is imported; on Linux
    it rewrites 127.0.0.1 to the machine's address otherwise), and binds its servers to every
    interface unless its address is 127.0.0.1. Flipped for the start of a local cluster only, so
    that joining a cluster later in this process still finds this machine's address."""
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def _endpoint(address: str) -> Optional[tuple[str, int]]:
    """The host and port of the head node that `address` names (None: Ray finds none, or the
    address is not HOST:PORT; Ray then says so itself, at once)."""
    if address.strip().lower() == "auto":  # RAY_ADDRESS, else the cluster started on this host
        try:
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address(address) or ""
        except Exception:
            return None
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return None
    return host, int(port)


def _check_reachable(address: str) -> None:
    """Fail at once when nothing accepts a TCP connection at the head node of `address`."""
    endpoint = _endpoint(address)
    if endpoint is None:
        return
    try:
        socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT).close()
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        raise ClusterSettingError(
            f"no Ray cluster answers at {address} ({endpoint[0]}:{endpoint[1]}: {why}); check "
            "--address and that the head node is up"
        ) from None


def ship_env() -> dict[str, Any]:
    """The runtime environment of a job on a cluster tttnn joins: this process's tttnn package
    directory as a `py_modules` entry. Ray zips it once into the cluster's object store and
    unpacks it on each node ahead of the node's own packages, so every worker imports the
    driver's files (Python code and the compiled core) without pip, network or a wheel."""
    import tttnn

    return {"py_modules": [str(Path(tttnn.__file__).parent)], "excludes": ["__pycache__"]}


@functools.lru_cache(maxsize=1)
def package_identity() -> dict[str, str]:
    """What a worker must share with the driver: tttnn's `version` and `core`, the SHA-256 of
    the compiled core (the extension file this process loaded); and `path`, the package
    directory it came from (for messages)."""
    import tttnn
    from tttnn import _tttnn

    digest = hashlib.sha256()
    with open(_tttnn.__file__, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {
        "version": tttnn.__version__,
        "core": digest.hexdigest(),
        "path": str(Path(tttnn.__file__).parent),
    }


def check_same_package(found: Mapping[str, Any], what: str) -> None:
    """Refuse an actor (`what`) whose `found` identity (a `package_identity`, reported by the
    actor, with its `node` address) differs from this process's in version or core build: it
    would compute other results, or fail in ways no retry mends."""
    mine = package_identity()
    if any(found.get(k) != mine[k] for k in ("version", "core")):
        raise RuntimeError(
            f"a {what} on node {found.get('node')} runs {_describe(found)}, but this driver "
            f"runs {_describe(mine)}: every node must run the driver's package (see 'The same "
            "package on every node' in docs/distributed.md)"
        )


def _describe(identity: Mapping[str, Any]) -> str:
    """`tttnn 0.1.0 (core sha256 0123456789ab, from DIR)`."""
    return (
        f"tttnn {identity.get('version')} (core sha256 {str(identity.get('core'))[:12]}, from "
        f"{identity.get('path')})"
    )


def check_fits(ray: Any, request: Mapping[str, float], what: str, hint: str) -> None:
    """Fail at once when no node of the cluster can hold one actor asking for `request`
    (resource -> amount): no live node has that much of every resource, and the cluster has no
    autoscaler whose node groups could add one. `what` names the actor, `hint` the settings
    that set the request."""
    wanted = {k: float(v) for k, v in request.items() if v > 0}
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(_holds(node, wanted) for node in nodes):
        return
    groups = _autoscaler_groups()
    if groups is None or any(_holds(g, wanted) for g in groups):
        return  # the cluster may add a node that holds it: the SCHEDULE_TIMEOUT rule
    raise ClusterSettingError(
        f"each {what} asks for {_amounts(wanted)} and no node of the cluster has that much: "
        f"{_largest(nodes, wanted)}; {hint}"
    )


def _holds(resources: Mapping[str, float], wanted: Mapping[str, float]) -> bool:
    return all(resources.get(k, 0.0) >= v - 1e-9 for k, v in wanted.items())


def _amounts(resources: Mapping[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in resources.items()) or "nothing"


def _largest(nodes: list[Mapping[str, float]], wanted: Mapping[str, float]) -> str:
    """The most any node has of each resource asked for."""
    if not nodes:
        return "it has no live node"
    most = {k: max(float(n.get(k, 0.0)) for n in nodes) for k in wanted}
    return f"the largest of its {len(nodes)} node(s) has {_amounts(most) if most else 'none'}"


def _autoscaler_groups() -> Optional[list[dict[str, float]]]:
    """The per-node resources of each node group an autoscaler may add ([] when the cluster
    has no autoscaler, as a local cluster; None when Ray does not say)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:
        return None
    if config is None:
        return []
    return [
        {k: float(v) for k, v in g.resources.items()}
        for g in config.node_group_configs
        if g.max_count != 0
    ]


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
