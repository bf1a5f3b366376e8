"""The parameter contract of recipes."""

from __future__ import annotations

import pytest

from twinkles.cli import main
from twinkles.workflow.contract import ParameterError, parse_parameters_cell, read_contract

from conftest import REPO

FIXTURES = REPO / "tests" / "fixtures" / "recipes"


def test_contract_reads_names_types_defaults_and_help():
    contract = read_contract(FIXTURES / "sweep.ipynb")
    params = {p.name: p for p in contract.parameters}
    assert list(params)[:3] == ["run_dir", "item", "scale"]
    assert params["scale"].annotation == "float" and params["scale"].default == 1.0
    assert params["fail_item"].help == 'this item raises in cell "compute"'


def test_every_problem_in_one_message():
    contract = read_contract(FIXTURES / "sweep.ipynb")
    with pytest.raises(ParameterError) as info:
        contract.check({"run_dir": "x", "item": "three", "scal": 2.0, "sleep_s": [1]})
    problems = info.value.problems
    assert len(problems) == 3
    text = str(info.value)
    assert "unknown parameter 'scal' (did you mean 'scale'?)" in text
    assert "'item' must be int, got 'three'" in text
    assert "'sleep_s' must be float, got [1]" in text


def test_int_is_a_float_but_not_the_other_way():
    contract = read_contract(FIXTURES / "sweep.ipynb")
    assert contract.problems({"item": 1, "scale": 2}) == []
    assert contract.problems({"item": 1.0})


def test_required_parameter_without_value():
    params = parse_parameters_cell(
        "threshold: float  # detection threshold (sigma)\nname: str = 'x'  # a name\n"
    )
    assert params[0].required and params[0].help == "detection threshold (sigma)"
    from twinkles.workflow.contract import RecipeContract

    contract = RecipeContract("r.ipynb", FIXTURES, params)
    assert contract.problems({}) == ["r.ipynb: parameter 'threshold' (float) has no value"]


def test_untyped_or_exotic_parameters_are_rejected():
    with pytest.raises(ValueError, match="not a typed parameter"):
        parse_parameters_cell("x = 3\n")
    with pytest.raises(ValueError, match="uses 'Path'"):
        parse_parameters_cell("p: Path = '.'  # a path\n")


def test_recipe_show(capsys):
    assert main(["recipe", "show", "simulate_visit"]) == 0
    out = capsys.readouterr().out
    assert "visit" in out and "the visit to draw" in out and "int" in out
    assert main(["recipe", "show", "nonesuch"]) == 2
    assert "no recipe 'nonesuch'" in capsys.readouterr().err
