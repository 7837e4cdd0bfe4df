"""The command line keeps the habits of argparse users, one test per habit, each through main(argv)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

import retrieval.cli as cli
from retrieval.cli import build_parser, main
from retrieval.cli.options import given
from retrieval.cli.parsing import parse_command_line
from retrieval.config import EvalConfig


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _usage(err: str) -> str:
    return err.splitlines()[0]


def test_options_and_positionals_in_any_order(collection, capsys):
    capsys.readouterr()
    for argv in (
        ["search", str(collection), "-k", "2", "a red car", "--json"],  # an option before the query
        ["search", "-k", "2", "--json", str(collection), "a red car"],  # options before both
        ["search", "--json", str(collection), "-k", "2", "a red car"],
    ):
        assert main(argv) == 0, argv
        hits = _json_lines(capsys.readouterr().out)
        assert len(hits) == 2 and all(h["query"] == "a red car" for h in hits)
    parser = build_parser()
    args, _ = parse_command_line(
        parser, ["search", "C", "-k", "2", "--", "-3 degrees"]
    )  # after --: positionals
    assert (args.collection, args.query, args.k) == ("C", "-3 degrees", 2)
    args, _ = parse_command_line(parser, ["eval", "--model", "m", "D", "-k", "1", "5"])
    assert (args.data, given(args, EvalConfig)["ks"]) == ("D", [1, 5])


def test_key_value_overrides_anywhere_on_the_line(corpus, train_config, tmp_path, capsys):
    manifest = str(corpus[0])
    for name, argv in {
        "after": ["train", manifest, "--out", "RUN", "--config", str(train_config), "max_steps=1", "seed=3"],
        "before": ["train", "max_steps=1", "--config", str(train_config), "seed=3", "--out", "RUN", manifest],
    }.items():
        run = tmp_path / name
        argv = [str(run) if a == "RUN" else a for a in argv]
        assert main([*argv, "--no-progress", "-q"]) == 0, capsys.readouterr().err
        saved = json.loads((run / "config.json").read_text())
        assert (saved["max_steps"], saved["seed"], saved["train_data"]) == (1, 3, manifest)
    # two things that are not overrides: the command's usage, exit status 2
    assert main(["train", manifest, manifest, "--out", str(tmp_path / "x")]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert _usage(err).startswith("usage: retrieval train") and "give one DATA" in err


def test_global_flags_before_and_after_the_command(collection, model_dir):
    parser = build_parser()
    for argv, verbose, quiet in (
        (["-v", "search", "c", "q"], 1, False),
        (["search", "c", "q", "-v"], 1, False),
        (["-v", "search", "c", "-vv", "q"], 3, False),
        (["search", "-q", "c", "q"], 0, True),
        (["-q", "classify", "-v", "predict", "--model", "m", "--classifier", "c", "--text", "t"], 1, True),
    ):
        args, _ = parse_command_line(parser, argv)
        assert (args.verbose, args.quiet) == (verbose, quiet), argv


def test_verbose_after_the_command_shows_the_traceback(collection, capsys):
    assert main(["search", str(collection), "a cat", "--model", "./no/such/model", "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith(
        "error: no model at ./no/such/model"
    )


@pytest.mark.parametrize(
    "argv,command",
    [
        (["search"], "search"),  # a missing positional
        (["search", "c", "q", "-k", "many"], "search"),  # a bad value
        (["train", "data.jsonl"], "train"),  # a missing required option
        (["eval", "data", "--model", "m", "--bogus"], "eval"),  # an unknown option
        (["classify", "predict", "--model", "m"], "classify predict"),  # nested command
    ],
)
def test_errors_show_the_commands_own_usage(argv, command, capsys):
    assert main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert _usage(err).startswith(f"usage: retrieval {command} ")
    assert "COMMAND ..." not in err and f"retrieval {command}: error:" in err


def test_a_usage_error_found_after_parsing_shows_the_usage_too(model_dir, tmp_path, capsys):
    argv = ["classify", "predict", "--model", str(model_dir), "--classifier", str(tmp_path)]
    assert main(argv) == cli.EXIT_USAGE  # neither --image nor --text
    err = capsys.readouterr().err
    assert _usage(err).startswith("usage: retrieval classify predict") and "give --image, --text" in err


def test_unknown_command_suggests_the_close_one(capsys):
    assert main(["serch", "c", "q"]) == cli.EXIT_USAGE
    assert "did you mean 'search'?" in capsys.readouterr().err


def test_train_takes_epochs_and_time_budget_as_demo_does(corpus, train_config, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", str(corpus[0]), "--out", str(run), "--config", str(train_config), "--epochs", "1",
            "--time-budget", "60", "--no-progress", "-q"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((run / "config.json").read_text())
    assert (saved["epochs"], saved["time_budget"]) == (1, 60.0)
    assert "1 epochs" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-h"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--epochs N" in text and "--time-budget S" in text
    # overrides win over the options, as documented (defaults < --config < options < overrides)
    argv = [*argv[:6], "--epochs", "5", "epochs=1", "--no-progress", "-q"]
    assert main([a if a != str(run) else str(tmp_path / "r2") for a in argv]) == 0
    assert json.loads((tmp_path / "r2" / "config.json").read_text())["epochs"] == 1


def test_search_queries_file_groups_the_results_per_query(collection, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("a red car\n\n  a blue dog  \na green cat\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["search", str(collection), "--queries", str(queries), "-k", "2", "--json"]) == 0
    hits = _json_lines(capsys.readouterr().out)
    assert [h["query"] for h in hits] == ["a red car"] * 2 + ["a blue dog"] * 2 + ["a green cat"] * 2
    assert [h["rank"] for h in hits] == [1, 2] * 3
    single = []
    for text in ("a red car", "a blue dog", "a green cat"):  # the same hits as one query at a time
        assert main(["search", str(collection), text, "-k", "2", "--json"]) == 0
        single += _json_lines(capsys.readouterr().out)
    assert [(h["id"], round(h["score"], 5)) for h in hits] == [
        (h["id"], round(h["score"], 5)) for h in single
    ]

    assert main(["search", str(collection), "--queries", str(queries), "-k", "2"]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("query ")]
    assert headers == ["query 1/3: a red car", "query 2/3: a blue dog", "query 3/3: a green cat"]
    assert out.count("rank  ") == 3

    assert main(["search", str(collection), "a cat", "--queries", str(queries)]) == cli.EXIT_USAGE
    assert "give no QUERY nor --image" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n \n")
    assert main(["search", str(collection), "--queries", str(tmp_path / "empty.txt")]) == 1
    assert "no query in" in capsys.readouterr().err
    assert main(["search", str(collection), "--queries", str(tmp_path / "missing.txt")]) == 1
    assert f"no query list at {tmp_path / 'missing.txt'} (--queries)" in capsys.readouterr().err


def test_search_table_shows_captions_and_paths(collection, corpus, capsys):
    capsys.readouterr()
    assert main(["search", str(collection), "a red car", "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "id", "modality", "caption", "path"]
    by_path = {r["image"]: r["caption"] for r in corpus[1]}
    for line in lines[1:]:
        path = line.split()[-1]
        assert path in by_path and by_path[path] in line  # each image's own caption beside it
    assert main(["search", str(collection), "a red car", "-k", "2", "--modality", "text"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert all(" text " in row and re.search(r"a \w+ \w+", row) for row in rows)


def test_search_table_fits_a_terminal(tmp_path):
    from retrieval.cli.table import hits_table
    from retrieval.search import Hit

    long = "a very long caption " * 10 + "\nwith a line break"
    hits = [
        Hit(
            id=7,
            score=0.5,
            metadata={"modality": "image", "caption": long, "path": "/x/" + "d" * 80 + "/cat.png"},
        )
    ]
    full = hits_table(hits)
    assert "\n" not in full.splitlines()[1] and "with a line break" in full  # nothing cut when not a terminal
    fitted = hits_table(hits, width=100).splitlines()
    assert all(len(line) <= 100 for line in fitted)
    assert fitted[1].endswith("/cat.png") and "a very long caption" in fitted[1] and "…" in fitted[1]
    assert hits_table([]) == "(no results)"
    relative = Path.cwd() / "images" / "a.png"
    shown = hits_table([Hit(id=1, score=1.0, metadata={"modality": "image", "path": str(relative)})])
    assert shown.splitlines()[1].endswith(os.path.join("images", "a.png")) and str(Path.cwd()) not in shown


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["search", "{tmp}/no_such_dir", "cat"],
         "no collection at {tmp}/no_such_dir (COLLECTION): the folder does not exist; create one with `retrieval embed SOURCE --model MODEL --out {tmp}/no_such_dir`"),
        (["search", "{tmp}/no_such_dir", "cat", "--model", "{model}"], "no collection at {tmp}/no_such_dir"),
        (["info", "{tmp}/gone"], "no collection at {tmp}/gone"),
        (["compact", "{tmp}/gone"], "no collection at {tmp}/gone"),
        (["check", "{tmp}/gone"], "no collection at {tmp}/gone"),
        (["search", "{tmp}", "cat"], "is a folder but not a collection (no manifest.json)"),
        (["search", "{coll}", "cat", "--model", "{tmp}/no/model"], "no model at {tmp}/no/model (--model): give a folder written by `retrieval train`"),
        (["embed", "{tmp}/nothing.jsonl", "--model", "{model}", "--out", "{tmp}/c"], "no corpus at {tmp}/nothing.jsonl (SOURCE)"),
        (["embed", "{corpus}", "--model", "{tmp}/m", "--out", "{tmp}/c"], "no model at {tmp}/m (--model)"),
        (["eval", "{tmp}/nothing.jsonl", "--model", "{model}"], "no pairs at {tmp}/nothing.jsonl (DATA)"),
        (["eval", "{corpus}", "--model", "{model}", "--collection", "{tmp}/gone"], "no collection at {tmp}/gone (--collection)"),
        (["train", "{tmp}/nothing.jsonl", "--out", "{tmp}/run"], "no training data at {tmp}/nothing.jsonl (DATA)"),
        (["train", "{corpus}", "--out", "{tmp}/run", "--init", "{tmp}/base"], "no model at {tmp}/base (--init)"),
        (["copy", "{tmp}/gone", "{tmp}/dst"], "no collection at {tmp}/gone (SRC)"),
    ],
)  # fmt: skip
def test_missing_things_are_named_in_cli_words_before_a_model_loads(
    argv, expected, collection, model_dir, corpus, tmp_path, monkeypatch, capsys
):
    import retrieval.model

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the missing thing was named")

    monkeypatch.setattr(retrieval.model, "load_model", refuse)
    monkeypatch.setattr(retrieval.model.TwinEncoder, "load", refuse)
    values = {
        "tmp": str(tmp_path),
        "model": str(model_dir),
        "coll": str(collection),
        "corpus": str(corpus[0]),
    }
    assert main([a.format(**values) for a in argv]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected.format(**values) in err


def test_a_recorded_model_that_moved_is_named_before_loading(collection, model_dir, tmp_path, capsys):
    moved = tmp_path / "moved"
    model_dir.rename(moved)
    try:
        assert main(["search", str(collection), "a red car"]) == 1
        err = capsys.readouterr().err
        assert f"no model at {model_dir}" in err and "name another with --model" in err
        assert main(["search", str(collection), "a red car", "--model", str(moved), "-k", "1"]) == 0
    finally:
        moved.rename(model_dir)


def test_hints_are_written_as_flags(corpus, model_dir, tmp_path, capsys):
    rows = [{"picture": r["image"], "text": r["caption"]} for r in corpus[1]]
    manifest = tmp_path / "other_columns.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert main(["eval", str(manifest), "--model", str(model_dir), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "--image-column" in err and "--caption-column" in err
    assert "image_column=" not in err and "caption_column=" not in err


def test_keyword_hints_become_the_commands_flags():
    from retrieval.cli.errors import in_flag_words, keyword_flags

    parser = build_parser()
    _, evaluate = parse_command_line(parser, ["eval", "d", "--model", "m"])
    flags = keyword_flags(evaluate)
    message = "EvalConfig.hubness='csls' needs a query bank: pass query_bank= (or image_column='img')"
    assert in_flag_words(message, flags) == (
        "--hubness 'csls' needs a query bank: pass --query-bank (or --image-column 'img')"
    )
    _, train = parse_command_line(parser, ["train", "d", "--out", "o"])
    message = "TrainConfig.init_model='x' and a model: give one; e.g. lr=3e-4 or model.embed_dim=128"
    assert in_flag_words(message, keyword_flags(train)) == (
        "--init 'x' and a model: give one; e.g. lr=3e-4 or model.embed_dim=128"  # overrides stay KEY=VALUE
    )


def test_every_library_exception_is_one_line(collection, monkeypatch, capsys):
    import retrieval.search

    def fail(*args, **kwargs):
        raise KeyError("payload")

    monkeypatch.setattr(retrieval.search, "search_collection", fail)
    assert main(["search", str(collection), "a cat"]) == 1
    err = capsys.readouterr().err
    assert err == "error: KeyError: 'payload' (run with -v for the traceback)\n"

    def busy(*args, **kwargs):
        raise RuntimeError("first line\n  second line")

    monkeypatch.setattr(retrieval.search, "search_collection", busy)
    assert main(["search", str(collection), "a cat"]) == 1
    assert capsys.readouterr().err == "error: first line second line\n"
    assert main(["-v", "search", str(collection), "a cat"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("error: first line second line\n")


def test_compact_while_another_handle_writes_is_one_line(tmp_path, capsys):
    """`retrieval compact` on a collection another handle holds for writing: CollectionBusyError,
    once an 18-line traceback, is one line and exit status 1."""
    from indexes import Collection

    path = tmp_path / "coll"
    with Collection.create(path, dim=4, index="Flat") as writer:
        writer.add(np.eye(4, dtype=np.float32))
        writer.save()
        assert main(["compact", str(path), "--all"]) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith(f"error: collection {path} is already open for writing")
        assert "read_only=" not in err  # said in the words of the command line
    assert main(["compact", str(path), "--all"]) == cli.EXIT_OK  # free again


def test_exit_statuses_are_documented(capsys):
    assert (cli.EXIT_OK, cli.EXIT_ERROR, cli.EXIT_USAGE, cli.EXIT_NOTHING_DONE) == (0, 1, 2, 3)
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for code in (0, 1, 2, 3, 130):
        assert re.search(rf"^\s+{code}\s+\w", out, re.M), code
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit status", 1)[1].split("\n#", 1)[0]
    for code in (0, 1, 2, 3, 130):
        assert f"| {code} |" in section, code
    assert main([]) == cli.EXIT_USAGE  # no command: the help, and a usage status
