"""The config tree: one place maps it to the CLI, JSON round trips it, each field is checked once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import SAMPLE_TEST
from tttnn.cli import main
from tttnn.config import BuildConfig, EvalConfig, TTTConfig, eval_points, leaf_fields


def test_every_setting_is_an_option() -> None:
    for command, cls, skip in ((["eval"], EvalConfig, {"progress"}),
                               # a build serves no index to workers
                               (["index", "build"], BuildConfig, {"shard_actors"})):  # fmt: skip
        res = CliRunner().invoke(main, [*command, "--help"])
        assert res.exit_code == 0
        for name, (_, fld, _) in leaf_fields(cls).items():
            if name in skip:
                continue
            flags = fld.metadata.get("flags") or (f"--{name.replace('_', '-')}",)
            assert any(f in res.output for f in flags), (command, name)


def test_json_round_trip_is_lossless() -> None:
    cfg = EvalConfig.from_flat(
        index="i", data=("a", "b"), out="o", neighbors=50, eval_at=(0, 5, 50), lr=1e-4,
        betas=(0.8, 0.99), grad_clip=None, lora_r=8, lora_target_modules=("q_proj",),
        windows_per_neighbor=2, domains=("x",), baselines=("in-context",), device="cpu",
    )  # fmt: skip
    again = EvalConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.ttt.betas == (0.8, 0.99) and again.test.data == ("a", "b")
    b = BuildConfig(tokenizer="none", vector_dtype="i8", chunk_tokens=256)
    assert BuildConfig.from_dict(json.loads(json.dumps(b.to_dict()))) == b
    assert b.tokenizer is None
    with pytest.raises(ValueError, match="no setting nope"):
        EvalConfig.from_dict({**cfg.to_dict(), "nope": 1})
    with pytest.raises(TypeError, match="no setting nope"):
        EvalConfig.from_flat(index="i", data=("a",), out="o", nope=1)


def test_eval_points_and_checks() -> None:
    assert eval_points(None, 20) == (0, 1, 2, 5, 10, 20)
    assert eval_points(None, 30) == (0, 1, 2, 5, 10, 20, 30)
    assert eval_points(None, 0) == (0,)
    assert eval_points((5, 1), 3) == (0, 1)
    assert TTTConfig(eval_at=(5, 0, 1, 1)).eval_at == (0, 1, 5)
    for bad, match in (({"lr": 0.0}, "lr"), ({"betas": (0.9,)}, "betas"),
                       ({"grad_clip": -1.0}, "grad_clip"), ({"max_length": 1}, "max_length"),
                       ({"lora_dropout": 1.0}, "lora_dropout")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            TTTConfig(**bad)


def test_training_settings_from_the_cli_reach_config_json(
    sample_index: Path, tiny_lm: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    args = ["eval", "--index", str(sample_index), "--data", str(SAMPLE_TEST), "--out", str(out),
            "--model", str(tiny_lm), "-k", "2", "--eval-at", "0,2", "--max-length", "64",
            "--lr", "3e-4", "--weight-decay", "0.1", "--betas", "0.8,0.95", "--eps", "1e-6",
            "--grad-clip", "none", "--autocast", "fp32", "--lora", "2", "--lora-alpha", "4",
            "--windows-per-neighbor", "all", "--limit", "1", "--exact", "-q"]  # fmt: skip
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    written = json.loads((out / "config.json").read_text())["config"]
    ttt = written["ttt"]
    assert (ttt["lr"], ttt["weight_decay"], ttt["betas"], ttt["eps"]) == (
        3e-4,
        0.1,
        [0.8, 0.95],
        1e-6,
    )
    assert (ttt["grad_clip"], ttt["lora_r"], ttt["lora_alpha"]) == (None, 2, 4)
    assert ttt["eval_at"] == [0, 2] and ttt["autocast_dtype"] == "fp32"
    assert written["pack"]["windows_per_neighbor"] is None  # `all`: every window of each neighbor
