"""Bits per byte, exactly as lm-evaluation-harness computes it for `loglikelihood_rolling` tasks.

lm-eval (wikitext, the Pile) scores a document by its token ids (no special tokens added), cut by
`get_rolling_token_windows(tokens, prefix_token, max_seq_len=max_length, context_len=1)` and
`make_disjoint_window` into windows that each predict a disjoint slice of the document: the first
window predicts the first `max_length` tokens from the prefix token (lm-eval's `prefix_token_id`:
BOS, else EOS) and the tokens before; every later window predicts the next `max_length` tokens (the
last one fewer) from a full `max_length`-token input. The document is never truncated. The summed
log-likelihood gives

    bits per byte = −Σ log p / Σ UTF-8 bytes / ln 2.

The window logic below is a faithful reimplementation of `lm_eval/utils.py`; its tests are lm-eval's
own test cases.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "BPBResult",
    "autocast_context",
    "bits_per_byte",
    "byte_weighted_bpb",
    "document_loglikelihood",
    "get_rolling_token_windows",
    "make_disjoint_window",
    "nats_to_bpb",
    "rolling_windows",
]

Window = tuple[list[int], list[int]]
AutocastDtype = Union[str, "torch.dtype", None]


def get_rolling_token_windows(
    token_list: Sequence[int], prefix_token: int, max_seq_len: int, context_len: int
) -> Iterator[Window]:
    """lm-eval's rolling windows: `(input_tokens, pred_tokens)` pairs covering every token once.

    Score only the last `len(pred_tokens)` positions of each input. `context_len` (≥ 1) is the
    minimum context each prediction gets; lm-eval uses 1 for perplexity tasks.
    """
    if not 1 <= context_len <= max_seq_len:
        raise ValueError(f"need 1 <= context_len <= max_seq_len, got {context_len}, {max_seq_len}")
    tokens = list(token_list)
    if not tokens:
        return
    # +1: inputs are shifted by one position relative to predictions
    pred_len = max_seq_len - context_len + 1
    predicted = 0

    # the first window predicts all its tokens, conditioned on the prefix token
    first_seq_len = min(max_seq_len, len(tokens))
    yield [prefix_token, *tokens[: first_seq_len - 1]], tokens[:first_seq_len]
    predicted += first_seq_len

    while predicted < len(tokens):
        window_pred_len = min(len(tokens) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            tokens[window_end - max_seq_len - 1 : window_end - 1],
            tokens[window_end - window_pred_len : window_end],
        )
        predicted += window_pred_len


def make_disjoint_window(pair: Window) -> Window:
    """lm-eval's `make_disjoint_window`: drop the context tokens that the continuation repeats."""
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_length: int) -> list[Window]:
    """`(context, continuation)` pairs as lm-eval's `loglikelihood_rolling` builds them.

    The continuations partition `tokens` in order; the model input of each pair is
    `(context + continuation)[-(max_length + 1):][:-1]`, at most `max_length` tokens.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    return [
        make_disjoint_window(w)
        for w in get_rolling_token_windows(tokens, prefix_token, max_length, context_len=1)
    ]


@dataclass(frozen=True)
class BPBResult:
    """Bits per byte of one document, with the sums it comes from."""

    bpb: float
    nll_nats: float  # −Σ log p over all tokens, natural log
    n_bytes: int  # UTF-8 bytes of the text
    n_tokens: int  # tokens scored (all of them: the document is never truncated)


def _resolve_autocast(dtype: AutocastDtype) -> torch.dtype | None:
    import torch

    if dtype is None or dtype in ("fp32", "float32", torch.float32):
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown autocast dtype {dtype!r}; use 'bf16', 'fp16' or 'fp32'")
    return table[dtype]


def autocast_context(device: torch.device, dtype: AutocastDtype) -> torch.autocast:
    """`torch.autocast` for `device` (any type) in `dtype`; disabled for fp32/None."""
    import torch

    resolved = _resolve_autocast(dtype)
    return torch.autocast(
        device_type=device.type, dtype=resolved or torch.bfloat16, enabled=resolved is not None
    )


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_max_length(model: torch.nn.Module, max_length: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the model's context of {limit} tokens")


def document_loglikelihood(
    model: torch.nn.Module,
    tokens: Sequence[int],
    eot_id: int,
    max_length: int,
    autocast_dtype: AutocastDtype = None,
    *,
    batch_size: int = 4,
    context_tokens: Sequence[int] = (),
) -> tuple[float, int]:
    """`(Σ log p, number of tokens)` of a whole token sequence, lm-eval's rolling definition.

    Windows of equal input length are scored `batch_size` at a time; log-softmax runs in fp32 on the
    scored positions only. The model is put in eval mode for scoring and its mode restored after.

    `context_tokens` (the in-context baseline) precede `tokens` in the rolling stream: the windows
    run over `context_tokens + tokens` and only the positions of `tokens` are scored, so each token
    sees up to `max_length` tokens of context, neighbors included.
    """
    import torch

    _check_max_length(model, max_length)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_ctx = len(context_tokens)
    windows = []
    pos = 0
    for ctx, cont in rolling_windows([*context_tokens, *tokens], eot_id, max_length):
        skip = max(0, n_ctx - pos)  # leading positions of this window that belong to the context
        pos += len(cont)
        if skip < len(cont):
            # keep the full input (ctx + cont) but score only the document's positions
            windows.append((ctx + cont[:skip], cont[skip:]))
    # model inputs and the number of (final) positions scored in each
    inputs = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in windows]
    by_len: dict[int, list[int]] = {}
    for i, inp in enumerate(inputs):
        by_len.setdefault(len(inp), []).append(i)

    device = _model_device(model)
    was_training = model.training
    model.eval()
    # Every token id goes to the device before the first forward pass and the sum stays there
    # until the end: on a GPU, a copy from the host or a read of a result in the loop would wait
    # for the work queued before it, and leave the GPU idle while the next is queued. The sum is
    # the same float64 additions in the same order as a sum on the host.
    conts = [c for _, c in windows]
    offsets = [0]
    for c in conts:
        offsets.append(offsets[-1] + len(c))
    targets = torch.tensor([t for c in conts for t in c], dtype=torch.long, device=device)
    groups = {
        length: torch.tensor([inputs[r] for r in idx], dtype=torch.long, device=device)
        for length, idx in by_len.items()
    }
    total = torch.zeros((), dtype=torch.float64, device=device)
    try:
        with torch.inference_mode(), autocast_context(device, autocast_dtype):
            for length, idx in by_len.items():
                for start in range(0, len(idx), batch_size):
                    rows = idx[start : start + batch_size]
                    logits = model(input_ids=groups[length][start : start + batch_size]).logits
                    for b, r in enumerate(rows):
                        n = len(conts[r])
                        scored = logits[b, length - n :]
                        if scored.dtype.itemsize < 4:  # bf16/fp16 logits: softmax in fp32
                            scored = scored.float()
                        scored = scored.log_softmax(-1)
                        target = targets[offsets[r] : offsets[r] + n]
                        lp = scored.gather(-1, target.unsqueeze(-1)).squeeze(-1)
                        total = total + lp.double().sum()
                    del logits
    finally:
        model.train(was_training)
    return float(total), offsets[-1]


def nats_to_bpb(nll_nats: float, n_bytes: float) -> float:
    """Bits per byte from a summed negative log-likelihood in nats: −Σ log p / Σ bytes / ln 2."""
    return nll_nats / n_bytes / math.log(2)


def byte_weighted_bpb(bpb: Sequence[float], n_bytes: Sequence[float]) -> float:
    """Bits per byte of a set of documents from each one's bits per byte and bytes: the
    byte-weighted mean, which equals Σ nll / Σ bytes / ln 2 over the set (lm-eval's aggregate)."""
    total = float(sum(n_bytes))
    return sum(b * n for b, n in zip(bpb, n_bytes)) / total if total else float("nan")


def encode_document(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a whole document as lm-eval's HF models encode it: no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def bits_per_byte(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    max_length: int,
    *,
    autocast_dtype: AutocastDtype = None,
    prefix_token: int | None = None,
    tokens: Sequence[int] | None = None,
    batch_size: int = 4,
) -> BPBResult:
    """Bits per byte of `text` under `model` (lm-eval's `bits_per_byte` for one document).

    `prefix_token` defaults to lm-eval's choice (the tokenizer's BOS, else EOS); `tokens` may pass
    the already-encoded text to skip re-tokenizing.
    """
    from tttnn.models import prefix_token_id

    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("cannot score an empty text (bits per byte needs at least one byte)")
    ids = encode_document(tokenizer, text) if tokens is None else list(tokens)
    prefix = prefix_token_id(tokenizer) if prefix_token is None else prefix_token
    logprob, n_tokens = document_loglikelihood(
        model, ids, prefix, max_length, autocast_dtype, batch_size=batch_size
    )
    nll = -logprob
    return BPBResult(
        bpb=nats_to_bpb(nll, n_bytes), nll_nats=nll, n_bytes=n_bytes, n_tokens=n_tokens
    )
