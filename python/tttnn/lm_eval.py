"""TTT-NN inside lm-evaluation-harness: the model `tttnn` (the extra `tttnn[lm-eval]`).

    tttnn lm-eval --model tttnn --tasks wikitext --device cpu \\
        --model_args pretrained=smollm2-135m,index=DIR,neighbors=20,lr=1e-4

`model_args` are the flat names of the settings `tttnn eval` takes (`EvalConfig`'s leaves; the
`tttnn eval` option `--weight-decay` is `weight_decay=`): `pretrained` (or `model`), `index`,
`device`, `progress`, and every leaf of `RetrievalConfig`, `PackConfig` and `TTTConfig` but
`eval_at` (the harness scores once, after all the neighbors). A tuple setting takes its items
separated by `:` (`betas=0.9:0.999`), since `,` separates the model_args. Anything else is an error
that names the settings there are; `index` is required (`neighbors=0`: the plain model).

Requests, each as `tttnn eval` treats a document (the same config, trainer, seed and reset):
- `loglikelihood_rolling` (perplexity tasks): per document, `tttnn.evaluate.evaluate_document`
  itself: retrieve its neighbors (leakage guard against the document), train, score with the
  trained weights by lm-eval's rolling windows (`tttnn.metrics`, equal to lm-eval's own to 1e-7),
  reset. The harness turns the log-likelihood into its `bits_per_byte`, which is `tttnn eval`'s.
- `loglikelihood` (multiple choice, cloze): the requests are grouped by context; per distinct
  context: retrieve its neighbors (the context is the query), train once, score every
  continuation of that context with lm-eval's own HF code (`HFLM`, on the trained weights), reset.
- `generate_until`: the same grouping; HFLM generates with the harness's stop sequences and
  `max_gen_toks` on the trained weights; reset.
The query is the whole context as the index's encoder reads it: its beginning, up to the
encoder's maximum length. With few-shot prompts that beginning is the first examples, the same for
every request, so retrieval follows them rather than the question: prefer `--num_fewshot 0`.
An empty context has no query: its requests are scored on θ0, counted and logged. A failure of
retrieval or training raises (the harness run stops) rather than score a request untrained; the
weights are back at θ0 whatever happened. Each context's timings (retrieve, pack, train, score,
reset) are in `records` and summed in the log.

lm-eval 0.4.x finds models only in its own table (`lm_eval.models.MODEL_MAPPING`), not through
entry points, so `lm_eval --model tttnn` cannot work from the shell: `tttnn lm-eval ARGS`
registers the model and runs lm-eval's command line with ARGS. In Python, `import tttnn.lm_eval`
registers it for `lm_eval.simple_evaluate(model="tttnn", ...)`.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

import lm_eval.models  # noqa: F401  (the built-in table first: `get_model` skips it once ours is in)
from lm_eval.api.instance import Instance
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from tttnn.config import (
    EvalConfig,
    PackConfig,
    RetrievalConfig,
    TTTConfig,
    leaf_fields,
    parse_flat,
)
from tttnn.corpus import Document
from tttnn.models import DEFAULT_LM

__all__ = ["TTTNNLM", "model_settings", "run_harness_cli"]

log = logging.getLogger(__name__)

NOT_SETTINGS = ("eval_at",)  # the harness scores once, after all the neighbors
OTHER_SETTINGS = ("index", "device", "progress")  # EvalConfig leaves outside the three groups


def _settings() -> tuple[str, ...]:
    """The model_args names that are config leaves."""
    groups = [n for c in (RetrievalConfig, PackConfig, TTTConfig) for n in leaf_fields(c)]
    return (*[n for n in groups if n not in NOT_SETTINGS], *OTHER_SETTINGS)


def model_settings(args: dict[str, Any]) -> tuple[str, EvalConfig]:
    """`(model, config)` from model_args: the names checked, the values typed, one `EvalConfig`
    (its own checks) whose `ttt.eval_at` is the number of neighbors."""
    args = dict(args)
    if "pretrained" in args and "model" in args:
        raise ValueError("tttnn model_args: give pretrained= or model=, not both")
    model = args.pop("pretrained", args.pop("model", DEFAULT_LM))
    known = _settings()
    unknown = sorted(set(args) - set(known))
    if unknown:
        hint = " (the harness scores once, after all the neighbors)" if "eval_at" in unknown else ""
        raise ValueError(
            f"tttnn model_args: unknown setting{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}{hint}; the settings are pretrained, "
            f"{', '.join(sorted(known))}"
        )
    try:  # the values' text read as on the command line
        flat = parse_flat(EvalConfig, args)
    except ValueError as e:
        raise ValueError(f"tttnn model_args: {e}") from None
    if flat.get("index") is None or not flat["index"].strip():
        given = "" if flat.get("index") is None else ", not an empty index="
        raise ValueError(
            f"tttnn model_args: index=DIR is required (the index to retrieve from){given}"
        )
    if not str(model).strip():
        raise ValueError("tttnn model_args: pretrained= is empty; name the model (or leave it out)")
    neighbors = flat.get("neighbors", RetrievalConfig().neighbors)
    cfg = EvalConfig.from_flat(
        **flat, model=str(model), data=("<lm-eval requests>",), out="<lm-eval>",
        eval_at=(neighbors,),
    )  # fmt: skip
    return str(model), cfg


def _device(device: Optional[str]) -> Optional[str]:
    """The harness's `--device` (default `cuda:0`) as HFLM treats it: a CUDA device on a machine
    without CUDA falls back to the CPU."""
    import torch

    if device and device.startswith("cuda") and not torch.cuda.is_available():
        log.warning("tttnn: device %s asked, no CUDA here: running on the CPU", device)
        return "cpu"
    return device


@register_model("tttnn")
class TTTNNLM(LM):
    """A causal LM that test-time trains on each request's nearest neighbors (see the module
    doc). `batch_size` and `max_batch_size` are HFLM's (loglikelihood, generate_until); rolling
    windows are scored `score_batch_size` at a time, as in `tttnn eval`."""

    def __init__(
        self, pretrained: str = DEFAULT_LM, *, batch_size: Any = 1,
        max_batch_size: Optional[int] = None, **model_args: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        from lm_eval.models.huggingface import HFLM

        from tttnn.evaluate import load_trainer, open_index

        if "device" in model_args:
            model_args["device"] = _device(model_args["device"])
        _, self.config = model_settings({"pretrained": pretrained, **model_args})
        cfg = self.config
        self.index = open_index(cfg)
        lm, tokenizer, self.trainer = load_trainer(cfg, self.index, device=cfg.run.device)
        hf_args: dict[str, Any] = {"batch_size": batch_size, "max_length": cfg.ttt.max_length}
        if max_batch_size is not None:
            hf_args["max_batch_size"] = max_batch_size
        if cfg.ttt.autocast_dtype == "bf16":  # scoring precision as in `tttnn eval`
            hf_args["mixed_precision_dtype"] = "bfloat16"
        # HFLM on the model object the trainer trains (LoRA adapters are injected into it)
        self.hf = HFLM(pretrained=lm, tokenizer=tokenizer, **hf_args)
        self._device = self.trainer.device
        self.records: list[dict[str, Any]] = []  # one per document or distinct context

    @classmethod
    def create_from_arg_string(
        cls, arg_string: str, additional_config: Optional[dict[str, Any]] = None
    ) -> TTTNNLM:
        """The model from `--model_args` text (lm-eval's own parsing), as `create_from_arg_obj`."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(
        cls, arg_dict: dict[str, Any], additional_config: Optional[dict[str, Any]] = None
    ) -> TTTNNLM:
        """The model from model_args and the harness's own settings (`additional_config`:
        `--device`, `--batch_size`, `--max_batch_size`). A setting in both is taken from
        model_args: the harness passes its `--device` whether or not it was typed (default
        `cuda:0`), so only model_args says which device was asked for."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        for name in sorted(set(extra) & set(arg_dict)):
            if extra[name] != arg_dict[name]:
                log.info("tttnn: %s=%s from model_args, not the harness's %s", name,
                         arg_dict[name], extra[name])  # fmt: skip
        return cls(**{**extra, **arg_dict})

    # -- the harness's three request types ------------------------------------------------------
    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:  # fmt: skip
        from tttnn.evaluate import evaluate_document

        out = []
        bar = self._bar(len(requests), "tttnn rolling", disable_tqdm)
        for i, req in enumerate(requests):
            (text,) = req.args
            if not text:
                out.append(0.0)  # nothing to predict (HFLM's answer too); nothing trained
                bar.update()
                continue
            doc = Document(doc_id=f"{req.task_name}:{req.doc_id}", text=text,
                           domain=str(req.task_name), source="lm-eval")  # fmt: skip
            t0 = time.perf_counter()
            row = self._guarded(
                "loglikelihood_rolling", i, text,
                functools.partial(evaluate_document, doc, self.config, self.index, self.trainer),
            )  # fmt: skip
            row["total_s"] = time.perf_counter() - t0
            k = max(map(int, row["bpb"]))
            row["nll_nats"] = row["bpb"][str(k)] * row["bytes"] * math.log(2)
            self._record("loglikelihood_rolling", row)
            out.append(-row["nll_nats"])
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), out[-1])
            bar.set_postfix_str(f"bpb {row['bpb']['0']:.3f}→{row['bpb'][str(k)]:.3f} (k={k})")
            bar.update()
        bar.close()
        self._log_timings("loglikelihood_rolling")
        return out

    def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:  # fmt: skip
        return self._per_context(
            "loglikelihood", requests, lambda group: self.hf.loglikelihood(group, disable_tqdm=True),
            disable_tqdm,
        )  # fmt: skip

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        return self._per_context(
            "generate_until", requests,
            lambda group: self.hf.generate_until(group, disable_tqdm=True), disable_tqdm,
        )  # fmt: skip

    # -- training once per context -------------------------------------------------------------
    def _per_context(
        self, kind: str, requests: Sequence[Instance], score: Callable[[list[Instance]], list[Any]],
        disable_tqdm: bool,
    ) -> list[Any]:  # fmt: skip
        """Group `requests` by context (first-seen order), train on each context's neighbors
        once, `score` the group on the trained weights, reset; the answers in request order."""
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(req.args[0], []).append(i)
        answers: list[Any] = [None] * len(requests)
        bar = self._bar(len(groups), f"tttnn {kind}", disable_tqdm)
        for n, (context, idx) in enumerate(groups.items()):
            group = [requests[i] for i in idx]
            t0 = time.perf_counter()
            row, results = self._guarded(
                kind, n, context, functools.partial(self.score_context, context, group, score)
            )
            row["total_s"] = time.perf_counter() - t0
            row["requests"] = len(group)
            self._record(kind, row)
            for i, res in zip(idx, results):
                answers[i] = res
            bar.update()
        bar.close()
        self._log_timings(kind)
        return answers

    def score_context(
        self, context: str, group: list[Instance], score: Callable[[list[Instance]], list[Any]]
    ) -> tuple[dict[str, Any], list[Any]]:
        """Train on the neighbors of `context`, `score(group)` with the trained weights, reset:
        the context's record and the scores."""
        from tttnn.evaluate import neighbor_windows, retrieve

        if not context.strip():  # no query to retrieve with: θ0 scores the group
            t = time.perf_counter()
            results = score(group)
            return {"empty_context": True, "score_s": time.perf_counter() - t}, results
        doc = Document(doc_id="context", text=context, domain="lm-eval", source="lm-eval")
        retrieved = retrieve([doc], self.config, self.index, self.trainer.tokenizer)[0]
        row, (windows, lengths, doc_index) = neighbor_windows(
            retrieved, self.config, self.index, self.trainer.tokenizer
        )
        with self.trainer.trained(windows, lengths, doc_index) as outcome:
            t = time.perf_counter()
            results = score(group)
            row["score_s"] = time.perf_counter() - t
        row["windows_trained"] = outcome.windows_trained
        row["tokens_trained"] = outcome.tokens_trained
        row["train_s"] = outcome.seconds.get("train", 0.0)
        row["reset_s"] = outcome.seconds.get("reset", 0.0)
        return row, results

    # -- plumbing ------------------------------------------------------------------------------
    def _guarded(self, kind: str, n: int, text: str, fn: Callable[[], Any]) -> Any:
        """`fn()`, or a RuntimeError that names the request: the run stops rather than score it
        untrained (the trainer is back at θ0 either way)."""
        try:
            return fn()
        except Exception as err:
            snippet = " ".join(text.split())[:60]
            raise RuntimeError(
                f"tttnn: test-time training for {kind} request {n} ({snippet!r}) failed: "
                f"{type(err).__name__}: {err}. The run stops: no request is scored untrained"
            ) from err

    def _record(self, kind: str, row: dict[str, Any]) -> None:
        row["kind"] = kind
        self.records.append(row)
        log.debug("tttnn %s: %s", kind, {k: v for k, v in row.items() if k != "neighbors"})

    def _log_timings(self, kind: str) -> None:
        rows = [r for r in self.records if r["kind"] == kind]
        phases = ("retrieve_s", "pack_s", "train_s", "score_s", "reset_s", "total_s")
        sums = {p: sum(r.get(p, 0.0) for r in rows) for p in phases}
        n = max(len(rows), 1)
        log.info(
            "tttnn %s: %d %s, k=%d; seconds per %s: %s; empty contexts (θ0): %d", kind, len(rows),
            "documents" if kind == "loglikelihood_rolling" else "contexts",
            self.config.retrieval.neighbors, "document" if kind == "loglikelihood_rolling" else
            "context", ", ".join(f"{p[:-2]} {s / n:.3f}" for p, s in sums.items()),
            sum(1 for r in rows if r.get("empty_context")),
        )  # fmt: skip

    def _bar(self, total: int, desc: str, disable: bool) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="ctx" if "rolling" not in desc else "doc",
                    disable=disable or not self.config.run.progress, dynamic_ncols=True)  # fmt: skip

    def set_cache_hook(self, cache_hook: Any) -> None:
        super().set_cache_hook(cache_hook)
        self.hf.set_cache_hook(cache_hook)  # HFLM records loglikelihood / generate_until answers

    @property
    def tokenizer_name(self) -> str:
        return str(self.hf.tokenizer_name)

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:  # fmt: skip
        return str(self.hf.apply_chat_template(chat_history, add_generation_prompt))

    def chat_template(self, chat_template: Any = False) -> Optional[str]:
        return self.hf.chat_template(chat_template)  # type: ignore[no-any-return]


def run_harness_cli(argv: Sequence[str]) -> None:
    """lm-eval's command line (`lm_eval ARGS`) with the model `tttnn` registered."""
    from lm_eval.__main__ import cli_evaluate
    from lm_eval.utils import setup_logging

    setup_logging()  # the harness's log handler (idempotent): the timings are logged through it
    harness_log = logging.getLogger("lm_eval")
    if not log.handlers:
        for handler in harness_log.handlers:
            log.addHandler(handler)
        log.setLevel(harness_log.level)
        log.propagate = False
    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
