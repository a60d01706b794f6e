"""Test-time training on nearest neighbors (Hardt & Sun, ICLR 2024), one document at a time.

For a test text and the training windows packed from its neighbors (nearest neighbor first):
score the text (k = 0), take one AdamW step per window (batch 1), score again after the windows of
the first k neighbors for each k in `eval_at`, then copy θ0 back into the weights. Every document
gets a fresh optimizer: the paper's code kept AdamW's moments across documents; we do not.

    trainer = TestTimeTrainer(model, tokenizer, TTTConfig(lr=2e-5))
    outcome = trainer.run(text, windows, lengths, doc_index)   # from tttnn.pack_windows
    outcome.bpb  # {0: 0.94, 1: 0.91, ...}

The reset is a plain in-place copy of the trainable weights (35 ms for SmolLM2-135M on this
2-core CPU, 0.04% of a document; a fraction of a millisecond on a GPU). Weights changed in place
between documents are used by the next document and then overwritten by θ0 at its reset: call
`snapshot()` to make them the new θ0.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from tttnn.config import TTTConfig, eval_points
from tttnn.metrics import autocast_context, document_loglikelihood, encode_document, nats_to_bpb
from tttnn.models import prefix_token_id
from tttnn.pack import check_windows

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["TTTConfig", "TTTError", "TTTOutcome", "TestTimeTrainer"]


class TTTError(RuntimeError):
    """Training on a document failed (non-finite loss or gradient, out of memory, ...)."""


@dataclass
class TTTOutcome:
    """What happened to one document."""

    nll_nats: dict[int, float]  # k (neighbors trained on) -> −Σ log p, natural log
    n_bytes: int
    n_tokens: int
    windows_trained: int = 0  # optimizer steps taken
    windows_skipped: int = 0  # windows with fewer than 2 real tokens (nothing to predict)
    tokens_trained: int = 0  # tokens in the windows trained on
    losses: list[float] = field(default_factory=list)  # training loss of each step
    seconds: dict[str, float] = field(default_factory=dict)  # "train", "score", "reset"

    @property
    def bpb(self) -> dict[int, float]:
        return {k: nats_to_bpb(v, self.n_bytes) for k, v in self.nll_nats.items()}


class _Stopwatch:
    """Seconds per named phase, the device synchronised at both ends so GPU work is counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        import torch

        sync = torch.cuda.synchronize if self.device.type == "cuda" else lambda *_: None
        sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            sync(self.device)
            self.seconds[phase] += time.perf_counter() - t0


class TestTimeTrainer:
    """Runs test-time training document after document on one model, resetting in between.

    With `lora_r`, the model is wrapped in a peft LoRA model (its linear layers gain adapters
    whose B matrices start at zero, so outputs are unchanged); `trainer.model` is the wrapped
    model. θ0 (the trainable parameters and the buffers) is snapshotted on the model's device.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: TTTConfig | None = None
    ) -> None:  # fmt: skip
        self.config = config or TTTConfig()
        self.tokenizer = tokenizer
        self.prefix_token = prefix_token_id(tokenizer)
        self.model = _with_lora(model, self.config) if self.config.lora_r else model
        self.device = next(self.model.parameters()).device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.snapshot()

    def snapshot(self) -> None:
        """Take the current weights and buffers as θ0, the state every reset returns to."""
        self._theta0 = [p.detach().clone() for p in self.params]
        self._buffers = [(b, b.detach().clone()) for b in self.model.buffers()]

    def reset(self) -> None:
        """Copy θ0 back into the weights and buffers; drop the gradients."""
        import torch

        with torch.no_grad():
            for p, p0 in zip(self.params, self._theta0):
                p.copy_(p0)
                p.grad = None
            for b, b0 in self._buffers:
                b.copy_(b0)

    def score(self, tokens: list[int]) -> float:
        """−Σ log p (nats) of the token ids of a text under the current weights (lm-eval's
        rolling windows)."""
        c = self.config
        logprob, _ = document_loglikelihood(
            self.model, tokens, self.prefix_token, c.max_length, c.autocast_dtype,
            batch_size=c.score_batch_size,
        )  # fmt: skip
        return -logprob

    def run(
        self, text: str, windows: Any, lengths: Any, doc_index: Any, *,
        n_neighbors: Optional[int] = None,
    ) -> TTTOutcome:  # fmt: skip
        """Test-time train on `windows` and score `text` at each k of `eval_at` up to the number
        of neighbors; the model is back at θ0 afterwards, also when training fails.

        `windows` (W, L) token ids padded after `lengths[i]` real tokens, `doc_index` (W,) the
        neighbor (0 = nearest) each window comes from, non-decreasing, as `tttnn.pack_windows`
        returns them. `n_neighbors` defaults to `doc_index.max() + 1`.
        """
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        windows, lengths, doc_index = check_windows(
            windows, lengths, doc_index, self.config.max_length, vocab
        )
        n = int(doc_index[-1]) + 1 if len(doc_index) else 0
        if n_neighbors is not None:
            if n_neighbors < n:
                raise ValueError(f"n_neighbors={n_neighbors} but doc_index reaches {n - 1}")
            n = n_neighbors
        n_bytes = len(text.encode("utf-8"))
        if n_bytes == 0:
            raise ValueError("cannot score an empty text")
        tokens = encode_document(self.tokenizer, text)
        out = TTTOutcome(nll_nats={}, n_bytes=n_bytes, n_tokens=len(tokens))
        clock = _Stopwatch(self.device)
        with clock("score"):
            out.nll_nats[0] = self.score(tokens)
        optimizer = self._new_optimizer()
        was_training = self.model.training
        try:
            with self._seeded():
                self.model.train()
                done = 0
                for k in eval_points(self.config.eval_at, n)[1:]:
                    stop = int(np.searchsorted(doc_index, k, side="left"))
                    with clock("train"):
                        for i in range(done, stop):
                            self._train_window(
                                optimizer, windows[i, : lengths[i]], out, i, doc_index[i]
                            )
                    done = stop
                    with clock("score"):
                        out.nll_nats[k] = self.score(tokens)
        finally:
            self.model.train(was_training)
            with clock("reset"):
                self.reset()
            out.seconds = dict(clock.seconds)
        return out

    def _train_window(
        self, optimizer: torch.optim.Optimizer, window: np.ndarray, out: TTTOutcome, i: int,
        neighbor: int,
    ) -> None:  # fmt: skip
        """One AdamW step on one window: next-token cross entropy on its tokens."""
        import torch

        if len(window) < 2:
            out.windows_skipped += 1
            return
        try:
            ids = torch.from_numpy(window).to(self.device).unsqueeze(0)
            with autocast_context(self.device, self.config.autocast_dtype):
                logits = self.model(input_ids=ids).logits
            loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
            if not torch.isfinite(loss):
                raise TTTError(f"non-finite training loss ({loss.item()})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
                if not torch.isfinite(norm):
                    raise TTTError(f"non-finite gradient norm ({float(norm)})")
            optimizer.step()
        except (RuntimeError, MemoryError) as err:  # TTTError included
            raise TTTError(
                f"training step on window {i} (neighbor {neighbor}, {len(window)} tokens) failed: "
                f"{type(err).__name__}: {err}"
            ) from err
        out.losses.append(loss.item())
        out.windows_trained += 1
        out.tokens_trained += len(window)

    def _new_optimizer(self) -> torch.optim.Optimizer:
        import torch

        c = self.config
        # the fused kernel is about 3x faster than the per-tensor loop on CPU (same update rule)
        fused = self.device.type in ("cpu", "cuda") and all(
            p.is_floating_point() for p in self.params
        )
        return torch.optim.AdamW(
            self.params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=fused
        )

    @contextlib.contextmanager
    def _seeded(self) -> Iterator[None]:
        """Seed torch's RNG for this document without disturbing the caller's RNG state."""
        import torch

        devices: list[Any] = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            yield


def _with_lora(model: torch.nn.Module, c: TTTConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    targets = list(c.lora_target_modules) if c.lora_target_modules else None
    lora = LoraConfig(r=c.lora_r or 8, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
    return get_peft_model(model, lora)  # type: ignore[arg-type]
