"""The model `tttnn` in lm-evaluation-harness, run by the harness's own code (`simple_evaluate`)
on the local tasks of tests/lm_eval_tasks: its bits per byte are `tttnn eval`'s, at k = 0 and
after training; multiple choice trains once per context and leaves θ0 behind."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")  # the `lm-eval` extra

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from tttnn.lm_eval import TTTNNLM, model_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "tests" / "lm_eval_tasks"
DOCS = TASKS / "docs.jsonl"
SMALL = {"max_length": 64, "windows_per_neighbor": 1, "autocast_dtype": "fp32"}


@pytest.fixture
def in_repo(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task YAMLs name their data files relative to the repository root."""
    monkeypatch.chdir(REPO)


def harness(lm: Any, tasks: list[str], **kw: Any) -> dict[str, Any]:
    return lm_eval.simple_evaluate(  # type: ignore[no-any-return]
        model=lm, tasks=tasks, task_manager=TaskManager(include_path=str(TASKS)), device="cpu",
        **kw,
    )  # fmt: skip


def test_model_args_map_onto_config_leaves() -> None:
    model, cfg = model_settings(
        {"pretrained": "smollm2-135m", "index": "DIR", "neighbors": 20, "lr": 1e-4,
         "weight_decay": 0, "betas": "0.8:0.99", "lora_target_modules": "q_proj:v_proj",
         "exact": True, "pack_short": True, "autocast_dtype": "fp32", "device": "cpu"}
    )  # fmt: skip
    assert model == "smollm2-135m" and cfg.index == "DIR" and cfg.run.device == "cpu"
    assert cfg.retrieval.neighbors == 20 and cfg.retrieval.exact is True
    assert cfg.ttt.lr == 1e-4 and cfg.ttt.weight_decay == 0.0 and cfg.ttt.betas == (0.8, 0.99)
    assert cfg.ttt.lora_target_modules == ("q_proj", "v_proj") and cfg.pack.pack_short is True
    assert cfg.ttt.eval_at == (20,) and cfg.ks == (0, 20)  # scored once, after all neighbors
    assert model_settings({"model": "m", "index": "DIR"})[0] == "m"
    every = model_settings({"index": "DIR", "windows_per_neighbor": "all"})[1]
    assert every.pack.windows_per_neighbor is None  # the CLI's word for every window
    three = model_settings({"index": "DIR", "windows_per_neighbor": "3"})[1]
    assert three.pack.windows_per_neighbor == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"index": "DIR", "nieghbors": 2}, "unknown setting nieghbors; the settings are "),
        ({"index": "DIR", "eval_at": 5}, "eval_at (the harness scores once"),
        ({"neighbors": 2}, "index=DIR is required"),
        ({"index": ""}, "index=DIR is required (the index to retrieve from), not an empty index="),
        ({"index": "DIR", "pretrained": " "}, "pretrained= is empty"),
        ({"index": "DIR", "neighbors": "many"}, "neighbors='many', expected int"),
        ({"index": "DIR", "lr": -1.0}, "lr must be a positive number"),
        ({"index": "DIR", "pretrained": "a", "model": "b"}, "not both"),
        ({"index": "DIR", "out": "x"}, "unknown setting out"),
    ],
)
def test_bad_model_args_are_refused(args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        model_settings(args)
    assert message in str(err.value)


@pytest.mark.slow
def test_device_in_model_args_is_not_overridden_by_the_harness(
    sample_index: Path, tiny_lm: Path
) -> None:
    """The harness passes its --device (default cuda:0) and --batch_size to every model; the
    ones in model_args are those asked for, by text (the CLI) or by dict (simple_evaluate)."""
    harness_settings = {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"}
    lm = TTTNNLM.create_from_arg_string(
        f"pretrained={tiny_lm},index={sample_index},device=cpu,progress=false,max_length=64",
        harness_settings,
    )
    assert lm.config.run.device == "cpu" and lm.trainer.device.type == "cpu"
    args = {"pretrained": str(tiny_lm), "index": str(sample_index), "device": "cpu",
            "batch_size": 2, "progress": False}  # fmt: skip
    lm = TTTNNLM.create_from_arg_obj(args, harness_settings)
    assert lm.config.run.device == "cpu" and lm.hf.batch_size == 2


def tttnn_eval_bpb(index: Path, tmp_path: Path, neighbors: int) -> tuple[dict[int, float], int]:
    """`tttnn eval` on the task's documents: byte-weighted bits per byte at each k, bytes."""
    from tttnn.config import EvalConfig
    from tttnn.evaluate import run_eval

    cfg = EvalConfig.from_flat(index=str(index), data=(str(DOCS),), out=str(tmp_path / "run"),
                               neighbors=neighbors, progress=False, device="cpu", **SMALL)  # fmt: skip
    run_eval(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    total = sum(r["bytes"] for r in rows)
    ks = rows[0]["bpb"].keys()
    return {int(k): sum(r["bpb"][k] * r["bytes"] for r in rows) / total for k in ks}, total


@pytest.mark.slow
def test_harness_bits_per_byte_equal_tttnn_eval(
    sample_index: Path, tmp_path: Path, in_repo: None
) -> None:
    want, _ = tttnn_eval_bpb(sample_index, tmp_path, neighbors=2)
    assert want[2] != pytest.approx(want[0], rel=1e-3)  # the training moved the score
    got = {}
    for k in (0, 2):
        lm = TTTNNLM(index=str(sample_index), neighbors=k, device="cpu", progress=False, **SMALL)
        res = harness(lm, ["tttnn_docs"])["results"]["tttnn_docs"]
        got[k] = res["bits_per_byte,none"]
        assert res["byte_perplexity,none"] == pytest.approx(2 ** got[k], rel=1e-9)
        assert math.isfinite(res["word_perplexity,none"])
        assert len(lm.records) == 3 and {r["kind"] for r in lm.records} == {"loglikelihood_rolling"}
    assert got[0] == pytest.approx(want[0], rel=1e-6)
    assert got[2] == pytest.approx(want[2], rel=1e-6)
    # lm-eval's own HF model loads the cached model folder and agrees with k = 0
    from tttnn.models import resolve_model

    hf = lm_eval.simple_evaluate(
        model="hf", tasks=["tttnn_docs"], task_manager=TaskManager(include_path=str(TASKS)),
        model_args={"pretrained": resolve_model("smollm2-135m"), "dtype": "float32",
                    "max_length": SMALL["max_length"]}, device="cpu",
    )["results"]["tttnn_docs"]  # fmt: skip
    assert hf["bits_per_byte,none"] == pytest.approx(want[0], rel=1e-6)


class CheckedTTTNN(TTTNNLM):
    """Records each context and checks the weights: trained while the harness scores, θ0 after."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.theta0 = {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}
        self.contexts: list[str] = []
        self.trained_while_scoring: list[bool] = []

    def at_theta0(self) -> bool:
        now = self.trainer.model.state_dict()
        return all(torch.equal(now[k], v) for k, v in self.theta0.items())

    def score_context(self, context: str, group: list[Instance], score: Any) -> Any:
        def checked(g: list[Instance]) -> list[Any]:
            self.trained_while_scoring.append(not self.at_theta0())
            return score(g)  # type: ignore[no-any-return]

        self.contexts.append(context)
        out = super().score_context(context, group, checked)
        assert self.at_theta0(), f"weights not back at θ0 after {context!r}"
        return out


def mc_loglikelihoods(result: dict[str, Any]) -> list[float]:
    return [r[0] for s in result["samples"]["tttnn_mc"] for r in s["filtered_resps"]]


@pytest.mark.slow
def test_multiple_choice_trains_once_per_context_and_resets(
    sample_index: Path, tiny_lm: Path, in_repo: None
) -> None:
    items = [json.loads(x) for x in (TASKS / "mc.jsonl").read_text().splitlines()]
    kw = dict(pretrained=str(tiny_lm), index=str(sample_index), device="cpu", progress=False,
              lr=1e-3, **SMALL)  # fmt: skip
    lm = CheckedTTTNN(neighbors=2, **kw)
    trained = mc_loglikelihoods(harness(lm, ["tttnn_mc"], log_samples=True))
    assert len(lm.contexts) == len(set(lm.contexts)) == len(items)  # once per distinct context
    assert all(lm.trained_while_scoring) and lm.at_theta0()
    assert [r["requests"] for r in lm.records] == [len(it["choices"]) for it in items]
    assert [r["windows_trained"] for r in lm.records] == [2] * len(items)
    assert all(len(r["neighbors"]) == 2 for r in lm.records)
    plain = CheckedTTTNN(neighbors=0, **kw)
    untrained = mc_loglikelihoods(harness(plain, ["tttnn_mc"], log_samples=True))
    assert not any(plain.trained_while_scoring)
    assert len(trained) == len(untrained) == sum(len(it["choices"]) for it in items)
    assert all(a != b for a, b in zip(trained, untrained))


@pytest.mark.slow
def test_generate_until_honours_stop_and_length_then_resets(
    sample_index: Path, tiny_lm: Path
) -> None:
    lm = CheckedTTTNN(pretrained=str(tiny_lm), index=str(sample_index), neighbors=2,
                      device="cpu", progress=False, **SMALL)  # fmt: skip
    contexts = ["The GNU General Public License says", "The open(2) system call"]
    reqs = [
        Instance("generate_until", {}, (c, {"until": ["e"], "max_gen_toks": 6}), idx=i)
        for i, c in enumerate([contexts[0], contexts[1], contexts[0]])
    ]
    out = lm.generate_until(reqs)
    assert len(out) == 3 and all(isinstance(s, str) and "e" not in s for s in out)
    tok = lm.trainer.tokenizer
    assert all(len(tok(s, add_special_tokens=False)["input_ids"]) <= 6 for s in out)
    assert lm.contexts == contexts and all(lm.trained_while_scoring) and lm.at_theta0()
    assert out[0] == out[2]  # the same context: trained once, the same greedy answer


@pytest.mark.slow
def test_a_failed_retrieval_stops_the_run_at_theta0(
    sample_index: Path, tiny_lm: Path, in_repo: None
) -> None:
    lm = CheckedTTTNN(pretrained=str(tiny_lm), index=str(sample_index), neighbors=500,
                      device="cpu", progress=False, **SMALL)  # fmt: skip
    with pytest.raises(RuntimeError) as err:
        harness(lm, ["tttnn_mc"])
    assert "neighbors, 500 asked" in str(err.value)
    assert "no request is scored untrained" in str(err.value)
    assert lm.at_theta0() and not lm.records


@pytest.mark.slow
def test_cli_passes_arguments_to_the_harness(
    sample_index: Path, tiny_lm: Path, tmp_path: Path, in_repo: None
) -> None:
    from click.testing import CliRunner

    from tttnn.cli import main

    args = ["lm-eval", "--model", "tttnn", "--tasks", "tttnn_docs", "--include_path", str(TASKS),
            "--model_args", f"pretrained={tiny_lm},index={sample_index},neighbors=1,"
            "max_length=64,windows_per_neighbor=1,progress=false",
            "--output_path", str(tmp_path / "out")]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "bits_per_byte" in res.output and "tttnn_docs" in res.output
    bad = CliRunner().invoke(main, [*args[:-2], "--model_args", f"index={sample_index},k=3"])
    assert bad.exit_code == 1 and "unknown setting k; the settings are" in bad.output
