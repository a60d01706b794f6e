"""Where a job runs: in this process, or on Ray (`tttnn.distributed`, the extra `tttnn[ray]`).

    index = jobs.build(["train.jsonl.zst"], "idx", config)      # config.ray.ray: on Ray workers
    summary = jobs.evaluate(eval_config)                          # eval_config.ray.ray: TTT workers
    with jobs.open_index("idx", ray_config) as index: ...         # ray_config.ray: shard actors

The stages (`tttnn.build`, `tttnn.evaluate`, `tttnn.index`, ...) run in one process and know
nothing of Ray; `tttnn.distributed` runs the same stages on a cluster. The choice between them is
made here, once, from the settings' `ray` switch; the command line calls these. Either way the
index and the rows are the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from tttnn.config import BuildConfig, EvalConfig, RayConfig
    from tttnn.embed import Encoder
    from tttnn.evaluate import EvalSummary
    from tttnn.index import Index, PathLike

__all__ = ["build", "evaluate", "open_index"]


def build(
    corpus_paths: PathLike | Iterable[PathLike], out: PathLike, config: BuildConfig | None = None,
    **kw: Any,
) -> Index:  # fmt: skip
    """Build an index of `corpus_paths` in `out`: `tttnn.build.build_index` (its keywords), or
    with `config.ray.ray` (or the keyword `ray=True`) `tttnn.distributed.build.build_distributed`
    (the same index)."""
    on_ray = config.ray.ray if config is not None else bool(kw.get("ray", False))
    if on_ray:
        from tttnn.distributed.build import build_distributed

        return build_distributed(corpus_paths, out, config, **kw)
    from tttnn.build import build_index

    return build_index(corpus_paths, out, config, **kw)


def evaluate(cfg: EvalConfig) -> EvalSummary:
    """Run (or resume) the evaluation of `cfg` (`tttnn.evaluate.run_eval`): its documents
    evaluated here, or with `cfg.ray.ray` by Ray workers (the same rows)."""
    from tttnn.evaluate import run_eval

    if cfg.ray.ray:
        from tttnn.distributed.evaluate import evaluate_on_ray

        return run_eval(cfg, evaluate_on_ray)
    return run_eval(cfg)


def open_index(
    path: PathLike, ray: Optional[RayConfig] = None, *, encoder: Optional[Encoder] = None
) -> Index:
    """The index at `path`, memory-mapped here (`Index.open`), or with `ray.ray` served by shard
    actors (`tttnn.distributed.index.RayIndex.open`: the same searches and answers). Close it
    when done (`close()`, or a `with` block): that stops the actors."""
    if ray is not None and ray.ray:
        from tttnn.distributed.index import RayIndex

        return RayIndex.open(path, ray, encoder=encoder)
    from tttnn.index import Index

    return Index.open(path, encoder=encoder)
