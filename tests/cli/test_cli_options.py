"""The command line takes its defaults and choices from the config dataclasses."""

from __future__ import annotations

import pytest

from retrieval.cli import build_parser
from retrieval.cli.options import given
from retrieval.config import DemoConfig, EmbedConfig, EvalConfig, ServeConfig


def parse(argv: list[str]):
    return build_parser().parse_args(argv)


def test_without_options_the_configs_keep_their_own_defaults():
    assert given(parse(["embed", "src", "--model", "m", "--out", "o"]), EmbedConfig) == {}
    assert given(parse(["eval", "data", "--model", "m"]), EvalConfig) == {}
    assert given(parse(["serve", "coll"]), ServeConfig) == {}
    assert given(parse(["demo"]), DemoConfig) == {}


def test_options_set_config_fields():
    args = parse(["embed", "src", "--model", "m", "--out", "o", "--batch-size", "8", "--workers", "0",
                  "--modality", "texts", "--prune", "--no-progress"])  # fmt: skip
    config = EmbedConfig().replace(**given(args, EmbedConfig))
    assert (config.batch_size, config.num_workers, config.modality) == (8, 0, "texts")
    assert config.prune is True and config.progress is False
    args = parse(["eval", "data", "--model", "m", "-k", "1", "3", "--template", "a {}", "--template", "{}"])
    config = EvalConfig().replace(**given(args, EvalConfig))
    assert config.ks == (1, 3) and config.templates == ("a {}", "{}")


def test_choices_come_from_the_config(capsys):
    with pytest.raises(SystemExit):
        parse(["embed", "src", "--model", "m", "--out", "o", "--engine", "spark"])
    err = capsys.readouterr().err
    assert all(repr(choice) in err for choice in EmbedConfig.CHOICES["engine"])


@pytest.mark.parametrize(
    "command,flag,value",
    [
        (["embed", "-h"], "--batch-size", EmbedConfig().batch_size),
        (["eval", "x", "-h"], "--chunk-size", EvalConfig().chunk_size),
        (["serve", "-h"], "--max-k", ServeConfig().max_k),
    ],
)
def test_help_shows_the_config_default(capsys, command, flag, value):
    with pytest.raises(SystemExit):
        parse(command)
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {value})" in text.split(flag, 2)[-1].split(" --", 1)[0]
