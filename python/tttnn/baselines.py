"""The paper's two baselines, scored on the same text as test-time training on neighbors
(`tttnn eval --baseline NAME`; each writes its own fields into the document's results row).

- `in-context`: the neighbors' tokens in the model's context in front of the text, no training.
- `dynamic-eval`: dynamic evaluation (Krause et al., 2018): train on the test text itself. It
  needs `--split-text`, where the query half is text the model has already seen: k AdamW steps
  on the query half, with the run's optimizer settings, then the rest is scored at the same k as
  the run. Step i trains window i mod W of the query half's tokens (`max_length`-token windows;
  `split_document` caps the query at `max_length` tokens, so W = 1 and every step trains on the
  whole query half again). At k it has taken k steps, as nearest neighbors at one window each:
  equal steps; its tokens trained are recorded too, since a query half is shorter than a window.
  `TestTimeTrainer.run` does the training and scoring, so the weights are back at θ0 after it.

Row fields: `bpb_in_context`, `in_context_s`; `bpb_dynamic_eval`, `dynamic_eval_steps` and
`dynamic_eval_tokens_trained` (each by k, like `bpb` and `steps`), `dynamic_eval_s`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tttnn.metrics import encode_document, nats_to_bpb

__all__ = ["dynamic_eval", "dynamic_eval_windows", "in_context_bpb"]


def in_context_bpb(trainer: Any, text: str, store: Any, ids: list[int], max_length: int) -> float:
    """The paper's in-context baseline: the neighbors' tokens (nearest last, next to the text,
    EOS-separated, at most half of the `max_length` context, the trainer's) precede the text in
    the model's rolling context (`trainer.score`); the weights are θ0 (the trainer has reset
    them)."""
    budget = max_length // 2
    ctx: list[int] = []
    eos = trainer.tokenizer.eos_token_id
    for i in ids:  # nearest first; each goes in front of the ones nearer to the text
        piece = [int(t) for t in store.tokens(i)[-budget:]]
        ctx = piece + ([eos] if eos is not None else []) + ctx
        if len(ctx) >= budget:
            break
    nll = trainer.score(encode_document(trainer.tokenizer, text), context=ctx[-budget:])
    return nats_to_bpb(nll, len(text.encode("utf-8")))


def dynamic_eval_windows(
    query_tokens: list[int], steps: int, max_length: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(windows, lengths, doc_index)` for `steps` steps on the query half: row i is window
    i mod W of the query's tokens, `doc_index` = i (step i counts as "neighbor" i, so the
    trainer scores after k steps at each k of its eval points)."""
    from tttnn._tttnn import pack_windows

    if len(query_tokens) < 2:
        raise ValueError(
            f"the query half has {len(query_tokens)} token(s): dynamic evaluation has nothing "
            "to train on"
        )
    windows, lengths, _ = pack_windows([np.asarray(query_tokens, dtype=np.uint32)], max_length)
    if steps == 0:
        return windows[:0], lengths[:0], np.zeros(0, dtype=np.int64)
    order = np.arange(steps) % len(windows)
    return windows[order], lengths[order], np.arange(steps, dtype=np.int64)


def dynamic_eval(trainer: Any, query: str, scored: str, steps: int) -> dict[str, Any]:
    """Dynamic evaluation of one split document: the row fields (see the module doc)."""
    tokens = encode_document(trainer.tokenizer, query)
    windows, lengths, doc_index = dynamic_eval_windows(tokens, steps, trainer.config.max_length)
    outcome = trainer.run(scored, windows, lengths, doc_index, n_neighbors=steps)
    return {
        "bpb_dynamic_eval": {str(k): v for k, v in outcome.bpb.items()},
        "dynamic_eval_steps": {str(k): v for k, v in outcome.steps_at.items()},
        "dynamic_eval_tokens_trained": {str(k): v for k, v in outcome.tokens_trained_at.items()},
    }
