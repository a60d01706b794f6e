"""tttnn beyond one machine, on Ray (the optional extra `tttnn[ray]`).

    cluster     connect to a cluster, or start a local one (token authentication on)
    pool        the worker actors of a job: how many, placement, dead and unplaceable workers
    index       RayIndex: the shards of an index served by actors; batched search, merged top-k
    build       the index build cut into work units, run by encoder workers; the driver commits
    evaluate    the evaluation spread over TTT worker actors; the driver writes the results

This package runs the single-process stages (`tttnn.build`, `tttnn.evaluate`, `tttnn.index`)
on a cluster; they never import it. `tttnn.jobs` picks one or the other, and the on-disk index
and the results rows are the same either way. Importing this package does not import Ray; its
functions do, with a clear error when the extra is missing.
"""

from tttnn.distributed.cluster import connect, require_ray, session

__all__ = ["connect", "require_ray", "session"]
