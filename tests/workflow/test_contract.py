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


def _written_datasets(recipe) -> set[str]:
    """Registered dataset types the recipe's code names in ``butler.put(obj, "NAME", ...)`` or
    ``butler.path("NAME", ...)`` (a file written without the butler's put)."""
    import ast

    import nbformat

    from twinkles.datasets import dataset_types

    named = set()
    for cell in nbformat.read(recipe, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "butler"
            ):
                continue
            position = {"put": 1, "path": 0}.get(node.func.attr)
            if position is not None and len(node.args) > position:
                name = node.args[position]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    named.add(name.value)
    return named & set(dataset_types())


def test_each_recipe_declares_what_it_writes():
    """The outputs a step must leave are declared by its recipe, and the declaration holds to
    the recipe's code: every declared dataset is written there, and every dataset written for
    the step's own data id is declared (a gathering step's per-visit intermediates, such as
    warps, are not outputs of its data id)."""
    from twinkles.datasets import dataset_type
    from twinkles.workflow.spec import PIPELINE

    step_dimensions = {"visit": ("visit",), "filter": ("filter",), "patch": ("patch",), "run": ()}
    for step in PIPELINE.steps:
        contract = read_contract(step.recipe_path())
        declared = set(contract.outputs)
        assert declared, f"{step.recipe} declares no outputs"
        written = _written_datasets(step.recipe_path())
        if step.name != "simulate_visit":  # its library call writes the eimage and its truth
            assert declared <= written, (step.recipe, declared - written)
        own = {n for n in written if dataset_type(n).dimensions == step_dimensions[step.dimension]}
        assert own <= declared, (step.recipe, own - declared)
        assert "outputs: " + ", ".join(contract.outputs) in contract.describe()


def test_outputs_are_the_declared_datasets_for_the_data_id(tiny_run):
    from twinkles.workflow.spec import PIPELINE

    step = PIPELINE.step("make_coadd")
    assert step.output_datasets(tiny_run, {"filter": "r"}) == [
        ("deepCoadd", {"filter": "r"}),
        ("deepCoadd_nImage", {"filter": "r"}),
        ("deepCoadd_summary", {"filter": "r"}),
    ]
    with pytest.raises(ValueError, match="output deepCoadd needs filter"):
        step.output_datasets(tiny_run, {"visit": 3})
