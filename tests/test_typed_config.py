"""Every key of every group is checked against its constructor's declared type and range before
anything is built (:mod:`pdebm.schema`): one ``pdebm: error:`` line that names the key, exit
status 2, and no run directory."""

from __future__ import annotations

import re
import typing
from typing import Annotated, Literal, Sequence

import pytest
from annotated_types import Interval
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class
from omegaconf import OmegaConf

from pdebm import cli
from pdebm.config import CONFIG_DIR, instantiate
from pdebm.errors import ConfigError
from pdebm.schema import Positive, annotations, check_node, check_value
from pdebm.validate import validate
from tests.conftest import TINY_2D, TINY_RUN, options, run_cli


BAD_GROUP_VALUES = [  # issue 24's cases
    ("sampler.n_steps=2.5", "sampler.n_steps"),
    ("sampler.n_steps=abc", "sampler.n_steps"),
    ("energy.channels=[a]", "energy.channels"),
    ("dataset.n_test=-3", "dataset.n_test"),
    ("eval.mmd_points=1.5", "eval.mmd_points"),
]


def _extra(override: str) -> list[str]:
    return ["energy=conv", "dataset=digits"] if override.startswith("energy.channels") else []


@pytest.mark.parametrize("override, key", BAD_GROUP_VALUES)
def test_bad_group_value_is_one_line_naming_the_key_before_any_directory(
        tmp_path, monkeypatch, capsys, override, key):
    """In-process through the real entry point (``cli.main``), as tests/test_bad_input.py does;
    the subprocess form is the next test."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *_extra(override), override])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert err.startswith(f"pdebm: error: {key}") and err.count("\n") == 1, err
    assert not list(tmp_path.iterdir())


def test_bad_group_value_in_a_real_process(tmp_path):
    override, key = BAD_GROUP_VALUES[0]
    r = run_cli(["train", *_extra(override), override], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"pdebm: error: {key}") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "outputs").exists()


def _typed_keys():
    """(group, option, key, kind) for every key of every option whose constructor declares it
    an int, a float, a bool, a choice or a list; and each option's composed config."""
    from hydra import compose, initialize_config_dir

    out, jobs = [], {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for group in ("dataset", "energy", "sampler", "schedule"):
            for option in options(group):
                jobs[group, option] = cfg = compose("train", [*TINY_RUN, f"{group}={option}"])
                hints = annotations(get_class(cfg[group]._target_))
                out += [(group, option, key, _kind(hints[key])) for key in cfg[group]
                        if key in hints and _kind(hints[key])]
    GlobalHydra.instance().clear()
    return out, jobs


def _kind(tp) -> str | None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _kind(args[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        kinds = {_kind(a) for a in args if a is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is Literal:
        return "choice"
    if origin in (list, tuple) or origin is Sequence or str(origin).endswith("Sequence'>"):
        return "list"
    return {int: "int", float: "float", bool: "bool"}.get(tp)


BAD = {"int": "abc", "float": "abc", "bool": 2, "choice": "no_such_choice", "list": "abc"}
TYPED, JOBS = _typed_keys()


def test_the_typed_keys_cover_every_group_and_kind():
    assert {g for g, *_ in TYPED} == {"dataset", "energy", "sampler", "schedule"}
    assert {k for *_, k in TYPED} == set(BAD)
    assert len(TYPED) > 100


@pytest.mark.parametrize("group, option", sorted({(g, o) for g, o, *_ in TYPED}))
def test_every_typed_key_refuses_a_value_of_the_wrong_type(group, option):
    """Set each key of the option, one at a time, to a value of the wrong kind: the pre-run
    checks name exactly that key."""
    job = JOBS[group, option]
    validate(job)  # the option as shipped passes
    raw = OmegaConf.to_container(job[group], resolve=False)
    for g, o, key, kind in TYPED:
        if (g, o) != (group, option):
            continue
        job[group][key] = BAD[kind]
        with pytest.raises(ConfigError) as err:
            validate(job)
        msg = str(err.value)
        assert msg.startswith(f"{group}.{key}") and "\n" not in msg, (key, kind, msg)
        job[group][key] = raw[key]  # as shipped again (an interpolation stays one)


@pytest.mark.parametrize("overrides, key", [
    (["langevin.step_size=abc"], "langevin.step_size"),            # the shared kernel node
    (["langevin.mala=1"], "langevin.mala"),
    (["sampler=replay_buffer_authors", "sampler.kernel.noise_scale=x"], "sampler.kernel.noise_scale"),
    (["eval.mmd_bandwidths=[a]"], "eval.mmd_bandwidths"),
])
def test_kernel_and_eval_nodes_are_typed_too(make_cfg, overrides, key):
    cfg = make_cfg(*TINY_2D, *overrides)
    with pytest.raises(ConfigError) as err:
        validate(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    assert str(err.value).startswith(key), str(err.value)


def test_integral_floats_are_integers_and_reach_the_constructor_as_int(make_cfg):
    cfg = make_cfg(*TINY_2D, "sampler=sgld", "sampler.n_steps=1e1", "sampler.n_samples=64.0")
    sampler = instantiate(cfg.sampler)
    assert sampler.kernel.n_steps == 10 and type(sampler.kernel.n_steps) is int
    assert sampler.n_samples == 64 and type(sampler.n_samples) is int


class _Toy:
    """A newcomer's constructor: annotations only, no checks written."""

    def __init__(self, n: Positive[int] = 3, rate: Annotated[float, Interval(gt=0, lt=1)] = 0.5,
                 mode: Literal["a", "b"] = "a", sizes: Sequence[Positive[int]] = (1, 2),
                 box: tuple[float, float] = (0.0, 1.0), scale: float | None = None,
                 flag: bool = False, other=None) -> None:
        self.n, self.sizes = n, sizes


@pytest.mark.parametrize("key, value, message", [
    ("n", 0, "toy.n must be > 0, got 0"),
    ("n", 2.5, "toy.n must be an integer, got 2.5"),
    ("n", True, "toy.n must be an integer, got True"),
    ("rate", 1.0, "toy.rate must be in (0, 1), got 1.0"),
    ("rate", "x", "toy.rate must be a number, got 'x'"),
    ("mode", "c", "toy.mode='c' is not one of ['a', 'b']"),
    ("sizes", [1, -2], "toy.sizes[1] must be > 0, got -2"),
    ("sizes", "12", "toy.sizes must be a list of integers > 0, got '12'"),
    ("box", [1.0], "toy.box must be a list of 2 numbers, got [1.0]"),
    ("scale", "big", "toy.scale must be a number or null, got 'big'"),
    ("flag", 1, "toy.flag must be true or false, got 1"),
])
def test_a_new_constructor_gets_the_checks_from_its_annotations(key, value, message):
    node = OmegaConf.create({"toy": {"_target_": f"{__name__}._Toy", key: value}}).toy
    with pytest.raises(ConfigError) as err:
        check_node(node)
    assert str(err.value) == message
    with pytest.raises(ConfigError, match=re.escape(message)):
        instantiate(node)


def test_a_new_constructor_gets_its_good_values_through():
    node = OmegaConf.create({"toy": {"_target_": f"{__name__}._Toy", "n": 4.0, "sizes": [3, 5.0],
                                     "scale": None, "other": {"anything": 1}}}).toy
    toy = instantiate(node)
    assert toy.n == 4 and type(toy.n) is int and list(toy.sizes) == [3, 5]
    assert check_value("k", None, int | None) is None
