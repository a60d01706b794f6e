"""The config tree: one place maps it to the CLI, JSON round trips it, each field is checked once."""

from __future__ import annotations

import functools
import inspect
import json
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from helpers import SAMPLE_TEST
from tttnn.cli import main
from tttnn.config import (
    DEMO_SETTINGS,
    BuildConfig,
    EvalConfig,
    RetrievalConfig,
    TTTConfig,
    eval_points,
    leaf_fields,
    parse_flat,
)


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


def _options(command: str) -> dict[str, click.Option]:
    return {p.name: p for p in main.commands[command].params if isinstance(p, click.Option)}


def test_search_takes_every_retrieval_setting_with_the_trees_default() -> None:
    """`tttnn search` offers every retrieval setting but those choosing what to train on; each
    default is `RetrievalConfig`'s, or the help says why not."""
    training_only = {"select", "candidates", "sift_lambda", "sift_alpha"}
    options = _options("search")
    for name, (_, fld, _) in leaf_fields(RetrievalConfig).items():
        if name in training_only:
            assert name not in options, name
            continue
        assert name in options, name
        if options[name].default != fld.default:
            assert "tttnn eval" in (options[name].help or ""), (name, options[name].help)
    assert options["neighbors"].opts[0] == "-k"
    assert options["guard"].default is False  # as before: search shows the index as it is


def test_demo_options_default_to_the_demo_settings() -> None:
    options = _options("demo")
    defaults = EvalConfig.from_flat(index="i", data=("d",), out="o", **DEMO_SETTINGS)
    expected = {"neighbors": defaults.retrieval.neighbors, "max_length": defaults.ttt.max_length,
                "limit_per_domain": defaults.test.limit_per_domain, "lr": defaults.ttt.lr,
                "model": defaults.model}  # fmt: skip
    assert {n: options[n].default for n in expected} == expected
    assert "--docs-per-domain" in options["limit_per_domain"].opts
    assert set(options) == {*expected, "workdir", "quiet"}


def test_search_and_the_guard_take_their_defaults_from_the_tree() -> None:
    from tttnn.guard import search_with_guard
    from tttnn.index import Index

    search = inspect.signature(Index.search).parameters
    assert search["k"].default == RetrievalConfig().neighbors
    assert search["threshold"].default == RetrievalConfig().guard_threshold
    guard = inspect.signature(search_with_guard).parameters
    assert guard["threshold"].default is inspect.Parameter.empty  # its caller passes it


# (setting, text, value): the same text means the same on the command line and in model_args
SPELLINGS = [
    ("betas", "0.9:0.999", (0.9, 0.999)),
    ("betas", "0.9,0.999", (0.9, 0.999)),
    ("windows_per_neighbor", "all", None),
    ("windows_per_neighbor", "ALL", None),
    ("windows_per_neighbor", "3", 3),
    ("grad_clip", "none", None),
    ("grad_clip", "0.5", 0.5),
    ("lr", "1e-4", 1e-4),
    ("neighbors", "20", 20),
    ("ef", "none", None),
    ("ef", "64", 64),
    ("shards", "0:2", (0, 2)),
    ("shards", "2,0", (2, 0)),  # sorted by RetrievalConfig, not by the parser
    ("lora_target_modules", "q_proj:v_proj", ("q_proj", "v_proj")),
    ("lora_target_modules", "q_proj, v_proj", ("q_proj", "v_proj")),
    ("autocast_dtype", "fp32", "fp32"),
    ("select", "sift", "sift"),
    ("device", "cpu", "cpu"),
    ("device", "none", None),
]
REJECTED = [("neighbors", "many"), ("betas", "0.9:x"), ("lr", "fast"), ("grad_clip", "off"),
            ("windows_per_neighbor", "none")]  # fmt: skip


def _cli_value(name: str, text: str) -> Any:
    """`text` as `tttnn eval`'s option for the setting `name` reads it."""
    command = main.commands["eval"]
    option = _options("eval")[name]
    return option.type_cast_value(click.Context(command), text)


@pytest.mark.parametrize(("name", "text", "value"), SPELLINGS)
def test_one_parser_reads_setting_text_for_the_cli_and_model_args(
    name: str, text: str, value: Any
) -> None:
    assert parse_flat(EvalConfig, {name: text}) == {name: value}
    assert _cli_value(name, text) == value


@pytest.mark.parametrize(("name", "text"), REJECTED)
def test_bad_setting_text_is_refused_by_the_cli_and_the_parser(name: str, text: str) -> None:
    with pytest.raises(click.BadParameter, match="expected"):
        _cli_value(name, text)
    with pytest.raises(ValueError, match=f"{name}='{text}', expected"):
        parse_flat(EvalConfig, {name: text})


def test_model_args_read_setting_text_as_the_cli_does() -> None:
    """lm-eval hands model_args over as text, or as numbers and booleans it converted itself."""
    lm_eval = pytest.importorskip("tttnn.lm_eval")
    for name, text, _ in SPELLINGS:
        _, cfg = lm_eval.model_settings({"index": "DIR", name: text})
        cli = EvalConfig.from_flat(index="DIR", data=("d",), out="o",
                                   **{name: _cli_value(name, text)})  # fmt: skip
        path = leaf_fields(EvalConfig)[name][0]
        assert functools.reduce(getattr, path, cfg) == functools.reduce(getattr, path, cli), name
    _, cfg = lm_eval.model_settings({"index": "DIR", "exact": True, "lr": 1e-4, "neighbors": 7})
    assert (cfg.retrieval.exact, cfg.ttt.lr, cfg.retrieval.neighbors) == (True, 1e-4, 7)
    for name, text in REJECTED:
        with pytest.raises(ValueError, match=f"tttnn model_args: {name}='{text}', expected"):
            lm_eval.model_settings({"index": "DIR", name: text})


def test_choice_lists_are_offered_and_enforced_from_one_place() -> None:
    for command, cls in (("eval", EvalConfig), ("build", BuildConfig)):
        group = main if command == "eval" else main.commands["index"]
        options = {p.name: p for p in group.commands[command].params}
        required = {"index": "i", "data": ("d",), "out": "o"} if cls is EvalConfig else {}
        for name, (_, fld, _) in leaf_fields(cls).items():
            choices = fld.metadata.get("choices")
            if not choices:
                continue
            assert tuple(options[name].type.choices) == tuple(choices), name
            bad = ("nope",) if fld.metadata.get("multiple") else "nope"
            with pytest.raises(ValueError, match=f"{name} must be one of {', '.join(choices)}"):
                cls.from_flat(**required, **{name: bad})


TOO_LARGE = [("ef", "99999999999999999999", 2**63 - 1), ("seed", str(2**63), 2**63 - 1),
             ("shards", f"0:{2**64}", 2**63 - 1), ("max_length", "9" * 30, 2**63 - 1)]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "most"), TOO_LARGE)
def test_an_int_beyond_what_a_run_can_take_is_refused_as_text_and_as_a_value(
    name: str, text: str, most: int
) -> None:
    """The CLI (bad usage), the model_args parser and the config itself: never an OverflowError
    deep inside a run."""
    with pytest.raises(click.BadParameter, match=f"too large: at most {most}"):
        _cli_value(name, text)
    with pytest.raises(ValueError, match=f"{name}='{text}', too large: at most {most}"):
        parse_flat(EvalConfig, {name: text})
    largest = f"0:{most}" if name == "shards" else str(most)  # still a setting
    assert parse_flat(EvalConfig, {name: largest})[name] == (
        (0, most) if name == "shards" else most
    )
    big = (0, most + 1) if name == "shards" else most + 1
    with pytest.raises(ValueError, match=f"{name} must be at most {most}, got {most + 1}"):
        EvalConfig.from_flat(index="i", data=("d",), out="o", **{name: big})
    assert _cli_value("seed", str(-(2**63))) == -(2**63)
    with pytest.raises(click.BadParameter, match=f"too small: at least {-(2**63)}"):
        _cli_value("seed", str(-(2**63) - 1))


def test_a_field_with_its_own_largest_value() -> None:
    from tttnn.corpus import MAX_DOC_BYTES_LIMIT

    build = main.commands["index"].commands["build"]
    option = next(p for p in build.params if p.name == "max_doc_bytes")
    ctx = click.Context(build)
    assert option.type_cast_value(ctx, str(MAX_DOC_BYTES_LIMIT)) == MAX_DOC_BYTES_LIMIT
    with pytest.raises(click.BadParameter, match=f"too large: at most {MAX_DOC_BYTES_LIMIT}"):
        option.type_cast_value(ctx, str(MAX_DOC_BYTES_LIMIT + 1))
    with pytest.raises(ValueError, match=f"max_doc_bytes must be at most {MAX_DOC_BYTES_LIMIT}"):
        BuildConfig(max_doc_bytes=MAX_DOC_BYTES_LIMIT + 1)
    with pytest.raises(ValueError, match="shard_size must be at most"):
        BuildConfig(shard_size=2**64)


def test_an_empty_index_path_is_not_the_current_directory() -> None:
    with pytest.raises(ValueError, match="index must name the index directory, got an empty"):
        EvalConfig.from_flat(index="", data=("d",), out="o")
