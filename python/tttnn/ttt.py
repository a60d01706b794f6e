"""Test-time training on nearest neighbors (Hardt & Sun, ICLR 2024), one document at a time.

For a test text and the training windows packed from its neighbors (nearest neighbor first):
score the text (k = 0), take one optimizer step per window (batch 1), score again after the
windows of the first k neighbors for each k in `eval_at`, then put the weights back to θ0 from an
in-memory snapshot and drop the optimizer, so that the next document starts from exactly the same
state (the original code kept AdamW's state across documents; we do not).

The restore costs no extra pass over memory. Each trainable parameter has two buffers: θ0, never
written, and a training buffer. `reset()` points the parameters back at θ0, which is O(1). The next
document scores and takes its first forward/backward on θ0 directly. Its first optimizer step then
writes `θ0 · (1 − lr · weight_decay)` into the training buffer. That is AdamW's own decoupled
weight-decay pass, done out of place instead of in place. The update follows with weight decay
off for that one step. The result is bit-identical to copying θ0 back and stepping normally (a test
checks this), and the copy a reset used to make (0.54 GB of reads and writes for SmolLM2-135M)
is gone. With weight_decay = 0, the first step starts with a plain copy, counted in `reset_s`.
Between documents the parameters *are* θ0: weights changed in place there (`load_state_dict`)
become the θ0 of every later document.

    trainer = TestTimeTrainer(model, tokenizer, TTTConfig(lr=2e-5))
    outcome = trainer.run(text, input_ids, lengths, doc_index)   # from tttnn.pack_windows
    outcome.bpb  # {0: 0.94, 1: 0.91, ...}
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from tttnn.metrics import autocast_context, document_loglikelihood, encode_document
from tttnn.models import prefix_token_id

if TYPE_CHECKING:
    import numpy.typing as npt
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["TTTConfig", "TTTError", "TTTOutcome", "TestTimeTrainer"]


class TTTError(RuntimeError):
    """Training on a document failed (non-finite loss or gradient, out of memory, ...)."""


@dataclass
class TTTConfig:
    """Hyperparameters of test-time training; defaults are the paper's (GPT-2 size models)."""

    lr: float = 2e-5  # the paper uses 5e-6 for 1B+ models
    eps: float = 1e-8
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: Optional[float] = 1.0  # max global grad norm; None disables clipping
    max_length: int = 1024  # scoring window (lm-eval rolling windows) and max training window
    eval_at: tuple[int, ...] = (0, 1, 2, 5, 10, 20, 50)  # score after the first k neighbors
    autocast_dtype: str = "bf16"  # "bf16" or "fp32"; weights stay fp32 either way
    lora_r: Optional[int] = None  # None: full fine-tuning; r: peft LoRA of rank r
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: Optional[tuple[str, ...]] = None  # None: peft's default for the model
    score_batch_size: int = 4
    seed: int = 0  # torch RNG seed for each document (dropout), so documents are independent

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.eps <= 0 or self.weight_decay < 0:
            raise ValueError("eps must be > 0 and weight_decay >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        ks = sorted({int(k) for k in self.eval_at})
        if not ks or ks[0] < 0:
            raise ValueError(f"eval_at must be non-negative neighbor counts, got {self.eval_at}")
        self.eval_at = tuple(ks)
        if self.autocast_dtype not in ("bf16", "fp32"):
            raise ValueError(
                f"autocast_dtype must be 'bf16' or 'fp32', got {self.autocast_dtype!r}"
            )
        if self.lora_r is not None and self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1 or None, got {self.lora_r}")
        if self.score_batch_size < 1:
            raise ValueError("score_batch_size must be >= 1")


@dataclass
class TTTOutcome:
    """What happened to one document."""

    bpb: dict[int, float]  # k (neighbors trained on) -> bits per byte
    nll_nats: dict[int, float]  # k -> −Σ log p (natural log)
    n_bytes: int
    n_tokens: int
    windows_trained: int  # optimizer steps taken
    windows_skipped: int  # windows with fewer than 2 real tokens (nothing to predict)
    losses: list[float] = field(default_factory=list)  # training loss of each step
    train_s: float = 0.0
    score_s: float = 0.0
    # Restoring θ0: re-pointing the parameters, plus the copy into the training buffer when the
    # optimizer has no weight decay to fuse it into (see the module docs).
    reset_s: float = 0.0

    def bpb_json(self) -> dict[str, float]:
        """`bpb` keyed by strings, as results.jsonl stores it."""
        return {str(k): v for k, v in self.bpb.items()}


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TestTimeTrainer:
    """Runs test-time training document after document on one model, resetting in between.

    With `lora_r`, the model is wrapped in a peft LoRA model (in place: its linear layers gain
    adapters whose B matrices start at zero, so outputs are unchanged); `trainer.model` is the
    wrapped model. θ0 is snapshotted once, on the model's device.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        config: TTTConfig | None = None,
    ) -> None:
        import torch

        self.config = config or TTTConfig()
        self.tokenizer = tokenizer
        self.prefix_token = prefix_token_id(tokenizer)
        if self.config.lora_r is not None:
            from peft import LoraConfig, get_peft_model

            lora = LoraConfig(
                r=self.config.lora_r,
                lora_alpha=self.config.lora_alpha,
                lora_dropout=self.config.lora_dropout,
                target_modules=(
                    list(self.config.lora_target_modules)
                    if self.config.lora_target_modules
                    else None
                ),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
        self.model = model
        self.device = next(model.parameters()).device
        self.params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        # θ0: the trainable parameters (LoRA: the adapters' initial values, base weights frozen)
        # and the buffers, cloned once on the model's device. The model's own parameter storage
        # becomes the training buffer; the parameters point at θ0 until the first step.
        with torch.no_grad():
            self._theta0 = [p.detach().clone() for _, p in self.params]
            self._work = [p.data for _, p in self.params]
            self._buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self._on_theta0 = False
        self._copy_s = 0.0
        self.reset()

    # --- the pieces -----------------------------------------------------------------------------

    def _new_optimizer(self) -> torch.optim.Optimizer:
        import torch

        c = self.config
        params = [p for _, p in self.params]
        # the fused kernel is about 3x faster than the per-tensor loop on CPU (same update rule)
        fused = self.device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
        return torch.optim.AdamW(
            params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay, fused=fused
        )

    def reset(self) -> None:
        """Put every trained weight back to θ0 and drop the gradients: the parameters point at
        the θ0 snapshot again (O(1)); buffers are copied back in place."""
        import torch

        with torch.no_grad():
            for (_, p), theta0 in zip(self.params, self._theta0):
                p.data = theta0
                p.grad = None
            for buf, snap in self._buffers:
                buf.copy_(snap)
        self._on_theta0 = True

    def _leave_theta0(self, optimizer: torch.optim.Optimizer) -> bool:
        """Before the first step after a reset: write θ0 into the training buffers, scaled by
        AdamW's decay factor when there is one, and point the parameters at them. Returns True
        when the decay was applied here (the step must then run without weight decay)."""
        import torch

        groups = optimizer.param_groups
        if len(groups) != 1:
            raise TTTError("expected one optimizer parameter group")
        lr, wd = float(groups[0]["lr"]), float(groups[0]["weight_decay"])
        t0 = time.perf_counter()
        with torch.no_grad():
            for (_, p), theta0, work in zip(self.params, self._theta0, self._work):
                if wd != 0.0:
                    torch.mul(theta0, 1 - lr * wd, out=work)
                else:
                    work.copy_(theta0)
                p.data = work
        self._on_theta0 = False
        if wd == 0.0:
            _sync(self.device)
            self._copy_s += time.perf_counter() - t0
        return wd != 0.0

    def score(self, text: str, tokens: list[int] | None = None) -> tuple[float, int]:
        """`(−Σ log p, n_tokens)` of `text` under the current weights (lm-eval rolling windows)."""
        ids = encode_document(self.tokenizer, text) if tokens is None else tokens
        logprob, n = document_loglikelihood(
            self.model,
            ids,
            self.prefix_token,
            self.config.max_length,
            self.config.autocast_dtype,
            batch_size=self.config.score_batch_size,
        )
        return -logprob, n

    def _train_step(self, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> float:
        """One AdamW step on one window: next-token cross entropy on its real tokens."""
        import torch

        with autocast_context(self.device, self.config.autocast_dtype):
            logits = self.model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        if not torch.isfinite(loss):
            raise TTTError(f"non-finite training loss ({loss.item()})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(
                [p for _, p in self.params], self.config.grad_clip
            )
            if not torch.isfinite(norm):
                raise TTTError(f"non-finite gradient norm ({float(norm)})")
        if self._on_theta0 and self._leave_theta0(optimizer):
            group = optimizer.param_groups[0]
            wd = group["weight_decay"]
            group["weight_decay"] = 0.0  # already applied by _leave_theta0
            try:
                optimizer.step()
            finally:
                group["weight_decay"] = wd
        else:
            optimizer.step()
        return loss.item()

    # --- the loop -------------------------------------------------------------------------------

    def run(
        self,
        text: str,
        windows: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        doc_index: npt.NDArray[np.int64],
        *,
        n_neighbors: int | None = None,
    ) -> TTTOutcome:
        """Test-time train on `windows` and score `text` at each k in `eval_at` (cut at the
        number of neighbors); the model is back at θ0 afterwards, also when training fails.

        `windows` (W, L) int64 rows of token ids padded after `lengths[i]` real tokens,
        `doc_index` (W,) the neighbor (0 = nearest) each window comes from, non-decreasing, as
        `tttnn.pack_windows` returns them. `n_neighbors` defaults to `doc_index.max() + 1`.
        """
        import torch

        cfg = self.config
        windows, lengths, doc_index = self._check_windows(windows, lengths, doc_index)
        k_max = int(doc_index.max()) + 1 if len(doc_index) else 0
        if n_neighbors is not None:
            if n_neighbors < k_max:
                raise ValueError(f"n_neighbors={n_neighbors} but doc_index reaches {k_max - 1}")
            k_max = n_neighbors
        ks = [k for k in cfg.eval_at if k <= k_max]
        if 0 not in ks:
            ks.insert(0, 0)

        n_bytes = len(text.encode("utf-8"))
        if n_bytes == 0:
            raise ValueError("cannot score an empty text")
        tokens = encode_document(self.tokenizer, text)
        out = TTTOutcome(
            bpb={}, nll_nats={}, n_bytes=n_bytes, n_tokens=len(tokens), windows_trained=0,
            windows_skipped=0,
        )  # fmt: skip

        def score(k: int) -> None:
            _sync(self.device)
            t0 = time.perf_counter()
            nll, _ = self.score(text, tokens)
            _sync(self.device)
            out.score_s += time.perf_counter() - t0
            out.nll_nats[k] = nll
            out.bpb[k] = nll / n_bytes / math.log(2)

        score(0)
        pending = [k for k in ks if k > 0]
        if pending:
            # train on the windows of the first max(ks) neighbors only, nearest first
            optimizer = self._new_optimizer()
            was_training = self.model.training
            try:
                with self._rng():
                    self.model.train()
                    done_windows = 0
                    for k in pending:
                        stop = int(np.searchsorted(doc_index, k, side="left"))
                        _sync(self.device)
                        t0 = time.perf_counter()
                        for i in range(done_windows, stop):
                            n = int(lengths[i])
                            if n < 2:
                                out.windows_skipped += 1
                                continue
                            ids = torch.from_numpy(windows[i, :n]).to(self.device).unsqueeze(0)
                            try:
                                out.losses.append(self._train_step(optimizer, ids))
                            except TTTError as err:
                                raise TTTError(
                                    f"training step on window {i} (neighbor {doc_index[i]}) "
                                    f"failed: {err}"
                                ) from None
                            except (RuntimeError, MemoryError) as err:
                                raise TTTError(
                                    f"training step on window {i} (neighbor {doc_index[i]}, "
                                    f"{n} tokens) failed: {type(err).__name__}: {err}"
                                ) from err
                            out.windows_trained += 1
                        done_windows = stop
                        _sync(self.device)
                        out.train_s += time.perf_counter() - t0
                        score(k)
            finally:
                del optimizer
                self.model.train(was_training)
                _sync(self.device)
                t0 = time.perf_counter()
                self.reset()
                _sync(self.device)
                # A plain copy made by the first step (no weight decay to fuse it into) was
                # timed inside train_s: count it as reset instead.
                out.reset_s = time.perf_counter() - t0 + self._copy_s
                out.train_s -= self._copy_s
                self._copy_s = 0.0
        return out

    @contextlib.contextmanager
    def _rng(self) -> Iterator[None]:
        """Seed torch's RNG for this document without disturbing the caller's RNG state."""
        import torch

        devices: list[Any] = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed)
            yield

    def _check_windows(
        self, windows: Any, lengths: Any, doc_index: Any
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        win = np.asarray(windows)
        if win.ndim != 2:
            raise ValueError(f"windows must be a 2-D (W, L) array, got shape {win.shape}")
        if win.size and not np.issubdtype(win.dtype, np.integer):
            raise ValueError(f"windows must hold integer token ids, got dtype {win.dtype}")
        win = np.ascontiguousarray(win, dtype=np.int64)
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        didx = np.asarray(doc_index, dtype=np.int64).reshape(-1)
        n_win, width = win.shape
        if len(lens) != n_win or len(didx) != n_win:
            raise ValueError(
                f"windows has {n_win} rows but lengths has {len(lens)} and doc_index {len(didx)}"
            )
        if n_win == 0:
            return win, lens, didx
        if width > self.config.max_length:
            raise ValueError(f"windows are {width} tokens wide, more than max_length")
        if lens.min() < 0 or lens.max() > width:
            raise ValueError(f"lengths must be within 0..{width} (the window width), got "
                             f"{lens.min()}..{lens.max()}")  # fmt: skip
        if didx.min() < 0 or np.any(np.diff(didx) < 0):
            raise ValueError("doc_index must be non-negative and non-decreasing (nearest first)")
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        real = win[np.arange(width)[None, :] < lens[:, None]]
        if real.size and (real.min() < 0 or (vocab is not None and real.max() >= vocab)):
            raise ValueError(f"token ids out of range for a vocabulary of {vocab}")
        return win, lens, didx
