"""Test-time training on nearest neighbors (Hardt & Sun, ICLR 2024), one document at a time.

Score the text (k = 0), take one AdamW step per window of its neighbors (nearest first, batch 1),
score again after the first k neighbors for each k of `eval_at`, copy θ0 back into the weights.
Every document gets a fresh optimizer (the paper's code kept AdamW's moments across documents).
The reset is a plain in-place copy: 35 ms for SmolLM2-135M on 2 CPU cores, 0.04% of a document.
Weights loaded between documents are overwritten at the next reset unless `snapshot()` is called.

    trainer = TestTimeTrainer(model, tokenizer, TTTConfig(lr=2e-5))
    trainer.run(text, windows, lengths, doc_index).bpb   # {0: 0.94, 1: 0.91, ...}
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from tttnn.config import TTTConfig, eval_points
from tttnn.metrics import autocast_context, document_loglikelihood, encode_document, nats_to_bpb
from tttnn.models import prefix_token_id, with_lora
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
    steps_at: dict[int, int] = field(default_factory=dict)  # k -> optimizer steps before scoring
    tokens_trained_at: dict[int, int] = field(default_factory=dict)  # k -> tokens trained by then
    losses: list[float] = field(default_factory=list)  # training loss of each step
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # "train", ...

    @property
    def bpb(self) -> dict[int, float]:
        return {k: nats_to_bpb(v, self.n_bytes) for k, v in self.nll_nats.items()}


class TestTimeTrainer:
    """Test-time training document after document on one model, reset in between. With
    `lora_r`, `trainer.model` is the model wrapped in LoRA adapters (`tttnn.models.with_lora`)."""

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, config: TTTConfig | None = None
    ) -> None:  # fmt: skip
        self.config = config or TTTConfig()
        self.tokenizer = tokenizer
        self.prefix_token = prefix_token_id(tokenizer)
        self.model = with_lora(model, self.config) if self.config.lora_r else model
        self.device = next(self.model.parameters()).device
        self.vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
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
        if self.device.type == "cuda":  # done copying when it returns, for honest timings
            torch.cuda.synchronize(self.device)

    def score(self, tokens: Sequence[int], context: Sequence[int] = ()) -> float:
        """−Σ log p (nats) of token ids under the current weights (lm-eval windows), `context`'s
        token ids in front of them in the model's context, not scored."""
        c = self.config
        logprob, _ = document_loglikelihood(
            self.model, tokens, self.prefix_token, c.max_length, c.autocast_dtype,
            batch_size=c.score_batch_size, context_tokens=context,
        )  # fmt: skip
        return -logprob

    def run(
        self, text: str, windows: Any, lengths: Any, doc_index: Any, *,
        n_neighbors: Optional[int] = None,
    ) -> TTTOutcome:  # fmt: skip
        """Test-time train on `windows` and score `text` at each k of `eval_at` up to
        `n_neighbors` (default: the last of `doc_index` + 1); back at θ0 afterwards, also after a
        failure. `windows` (W, L), `lengths` (W,), `doc_index` (W,) as `tttnn.pack_windows` packs
        them: token ids padded after `lengths[i]`, the neighbor each window comes from."""
        c = self.config
        *wins, n = check_windows(windows, lengths, doc_index, c.max_length, self.vocab, n_neighbors)
        if not text:
            raise ValueError("cannot score an empty text")
        tokens = encode_document(self.tokenizer, text)
        out = TTTOutcome(nll_nats={}, n_bytes=len(text.encode("utf-8")), n_tokens=len(tokens))
        with contextlib.closing(self._train(wins, eval_points(c.eval_at, n), out)) as trained_to:
            for k in trained_to:
                t0 = time.perf_counter()
                out.nll_nats[k] = self.score(tokens)  # on the host when it returns
                out.seconds["score"] += time.perf_counter() - t0
        return out

    @contextlib.contextmanager
    def trained(self, windows: Any, lengths: Any, doc_index: Any) -> Iterator[TTTOutcome]:
        """Test-time train on all `windows` as `run` does, without scoring: the block runs with
        the trained weights, in eval mode, under the same seeded RNG; θ0 back afterwards, also
        after a failure (`tttnn.lm_eval` scores the harness's requests in the block)."""
        *wins, n = check_windows(windows, lengths, doc_index, self.config.max_length, self.vocab)
        out = TTTOutcome(nll_nats={}, n_bytes=0, n_tokens=0)
        with contextlib.closing(self._train(wins, [n], out)) as trained_to:
            next(trained_to)
            self.model.eval()
            yield out

    def _train(
        self, packed: Sequence[np.ndarray], ks: Sequence[int], out: TTTOutcome
    ) -> Generator[int, None, None]:
        """The loop: a fresh AdamW, dropout seeded, one step per window in order; yields each k of
        `ks` (ascending) once the first k neighbors are trained on, for the caller to score. The
        model's mode, θ0 and the caller's RNG state are back when it ends or is closed.

        The host waits for the device once per k, not per step: the losses (and gradient norms)
        of the steps before k come back together, and a non-finite one fails the document there,
        naming the first window it came from (the steps after it ran on weights that θ0
        replaces anyway)."""
        import torch
        from torch.nn.functional import cross_entropy

        windows, lengths, doc_index = packed
        c, done = self.config, 0
        optimizer = torch.optim.AdamW(  # fresh for every document; fused: 3x the CPU loop
            self.params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay,
            fused=self.device.type in ("cpu", "cuda"),
        )  # fmt: skip
        ids = torch.from_numpy(windows).to(self.device)  # one copy, not one (and a wait) per step
        was_training = self.model.training
        try:
            with seeded_rng(self.device, c.seed):
                self.model.train()
                for k, stop in zip(ks, np.searchsorted(doc_index, ks)):  # [0, stop): neighbors < k
                    t0, steps, losses, norms = time.perf_counter(), [], [], []
                    for i in range(done, stop):
                        if lengths[i] < 2:  # nothing to predict
                            out.windows_skipped += 1
                            continue
                        try:
                            window = ids[i, : lengths[i]].unsqueeze(0)
                            with autocast_context(self.device, c.autocast_dtype):
                                logits = self.model(input_ids=window).logits
                            loss = cross_entropy(logits[0, :-1].float(), window[0, 1:])
                            optimizer.zero_grad(set_to_none=True)
                            loss.backward()
                            if c.grad_clip is not None:
                                norm = torch.nn.utils.clip_grad_norm_(self.params, c.grad_clip)
                                norms.append(norm.float())
                            optimizer.step()
                        except (RuntimeError, MemoryError) as err:
                            raise TTTError(
                                f"{_step(i, lengths, doc_index)} failed: {type(err).__name__}: {err}"
                            ) from err
                        steps.append(i)
                        losses.append(loss.detach())
                        out.windows_trained += 1
                        out.tokens_trained += int(lengths[i])
                    if steps:
                        n = len(steps)
                        host = torch.stack(losses + norms).tolist()  # the one wait for the device
                        _check_finite(steps, host[:n], host[n:], lengths, doc_index)
                        out.losses.extend(host[:n])
                        out.seconds["train"] += time.perf_counter() - t0
                    done = stop
                    out.steps_at[k] = out.windows_trained
                    out.tokens_trained_at[k] = out.tokens_trained
                    yield k
        finally:
            self.model.train(was_training)
            t0 = time.perf_counter()
            self.reset()
            out.seconds["reset"] += time.perf_counter() - t0


def _step(i: int, lengths: np.ndarray, doc_index: np.ndarray) -> str:
    return f"training step on window {i} (neighbor {doc_index[i]}, {lengths[i]} tokens)"


def _check_finite(
    steps: Sequence[int], losses: Sequence[float], norms: Sequence[float], lengths: np.ndarray,
    doc_index: np.ndarray,
) -> None:  # fmt: skip
    """TTTError naming the first of `steps` (window numbers) whose training loss or gradient
    norm (`norms`: empty when gradients are not clipped) is not finite."""
    for j, i in enumerate(steps):
        if not math.isfinite(losses[j]):
            what, v = "training loss", losses[j]
        elif norms and not math.isfinite(norms[j]):
            what, v = "gradient norm", norms[j]
        else:
            continue
        raise TTTError(f"{_step(i, lengths, doc_index)} failed: non-finite {what} ({v})")


@contextlib.contextmanager
def seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """torch's random generators of the CPU and of `device` seeded with `seed` for the block,
    the caller's states back afterwards. No other generator is touched: `torch.manual_seed`
    seeds every GPU (which `fork_rng` restores only for the devices it is given) and, before
    CUDA is started, queues that seeding for when it is."""
    import torch

    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
