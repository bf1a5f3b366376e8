"""The parameter contract of a recipe: its cell tagged ``parameters``, read and enforced.

A recipe declares each parameter as a typed assignment with a comment::

    run_dir: str = "runs/tiny"  # the run: runs/<name> or runs/<name>.yaml
    visit: int = 1  # the visit to draw, an obsHistID of the run's cadence
    threshold: float  # no default: every execution must give it

:func:`read_contract` turns that cell into a :class:`RecipeContract` (names, types from the
annotations, defaults, help from the comments). :meth:`RecipeContract.check` refuses, before
anything is submitted, an unknown name (with the nearest known one), a value of the wrong type
or a missing value, listing every problem in one message. Papermill itself only warns about
unknown names and never checks types.

A recipe also declares, in its notebook metadata, the datasets a successful execution leaves
(``"twinkles": {"outputs": ["calexp", "src", ...]}``): the pipeline reads them from there, so
what a step must leave lives with the recipe that writes it, and a test holds the declaration
to the recipe's own ``butler.put`` calls.
"""

from __future__ import annotations

import ast
import difflib
import io
import tokenize
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import nbformat
from pydantic import TypeAdapter, ValidationError

from twinkles.errors import TwinklesError

__all__ = ["Parameter", "ParameterError", "RecipeContract", "read_contract"]

_NO_DEFAULT = object()

#: Annotations a parameters cell may use (what papermill can pass: JSON-like values).
_ALLOWED_NAMES = {"str", "int", "float", "bool", "list", "dict", "None", "Any"}


class ParameterError(TwinklesError, ValueError):
    """Parameters that do not satisfy a recipe's contract; ``problems`` lists each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"recipe parameters refused:\n{lines}")


@dataclass(frozen=True)
class Parameter:
    """One declared parameter."""

    name: str
    annotation: str
    default: Any
    help: str

    @property
    def required(self) -> bool:
        """True when the recipe's parameters cell gives no default."""
        return self.default is _NO_DEFAULT

    @property
    def default_repr(self) -> str:
        """The default as the recipe writes it, or ``(required)``."""
        return "(required)" if self.required else repr(self.default)


def _type_of(annotation: str) -> Any:
    tree = ast.parse(annotation, mode="eval")
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _ALLOWED_NAMES:
            raise ValueError(f"parameter type {annotation!r} uses {node.id!r}")
    return eval(compile(tree, "<annotation>", "eval"), {"Any": Any})


@lru_cache(maxsize=256)
def _adapter(annotation: str) -> TypeAdapter:
    return TypeAdapter(_type_of(annotation))


@dataclass(frozen=True)
class RecipeContract:
    """The parameters a recipe accepts and the datasets it leaves."""

    recipe: str
    path: Path
    parameters: tuple[Parameter, ...]
    outputs: tuple[str, ...] = ()
    """Dataset types a successful execution leaves (for its data id), from the notebook's
    metadata (``twinkles.outputs``)."""

    def names(self) -> list[str]:
        """The parameters' names, in the order of the parameters cell."""
        return [p.name for p in self.parameters]

    def problems(self, values: dict[str, Any], context: str = "") -> list[str]:
        """Every way ``values`` break the contract (empty when they satisfy it)."""
        where = f"{context}: " if context else ""
        declared = {p.name: p for p in self.parameters}
        out = []
        for name in values:
            if name not in declared:
                near = difflib.get_close_matches(name, declared, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                known = ", ".join(declared)
                out.append(
                    f"{where}{self.recipe}: unknown parameter {name!r}{hint}; it takes {known}"
                )
        for p in self.parameters:
            if p.name not in values:
                if p.required:
                    out.append(
                        f"{where}{self.recipe}: parameter {p.name!r} ({p.annotation}) has no value"
                    )
                continue
            try:
                _adapter(p.annotation).validate_python(values[p.name], strict=True)
            except ValidationError:
                # JSON/YAML ints are fine where a float is declared
                if p.annotation == "float" and type(values[p.name]) is int:
                    continue
                out.append(
                    f"{where}{self.recipe}: parameter {p.name!r} must be {p.annotation}, "
                    f"got {values[p.name]!r}"
                )
        return out

    def check(self, values: dict[str, Any], context: str = "") -> None:
        """Raise :class:`ParameterError` listing every problem with ``values``."""
        problems = self.problems(values, context)
        if problems:
            raise ParameterError(problems)

    def describe(self) -> str:
        """Human-readable contract (``twinkles recipe show``)."""
        width = max((len(p.name) for p in self.parameters), default=0)
        lines = [f"{self.recipe} ({self.path})", "parameters:"]
        for p in self.parameters:
            lines.append(f"  {p.name:<{width}}  {p.annotation:<8} = {p.default_repr:<20}  {p.help}")
        lines.append(f"outputs: {', '.join(self.outputs) or '(none declared)'}")
        return "\n".join(lines)


def _comments_by_line(source: str) -> dict[int, str]:
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def parse_parameters_cell(source: str, recipe: str = "<cell>") -> tuple[Parameter, ...]:
    """Parameters declared in the source of a parameters cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"{recipe}: the parameters cell is not valid Python: {exc}") from None
    comments = _comments_by_line(source)
    params = []
    for node in tree.body:
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            raise ValueError(
                f"{recipe}: line {node.lineno} of the parameters cell is not a typed "
                f"parameter ('name: type = value  # help')"
            )
        annotation = ast.unparse(node.annotation)
        try:
            _type_of(annotation)
        except ValueError as exc:
            raise ValueError(f"{recipe}: {exc}") from None
        default = _NO_DEFAULT if node.value is None else ast.literal_eval(node.value)
        params.append(Parameter(node.target.id, annotation, default, comments.get(node.lineno, "")))
    return tuple(params)


@lru_cache(maxsize=64)
def _read_contract_cached(path: Path, mtime_ns: int) -> RecipeContract:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}")
    outputs = nb.metadata.get("twinkles", {}).get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
        raise ValueError(f"{path.name}: metadata twinkles.outputs must be a list of dataset types")
    return RecipeContract(
        path.name, path, parse_parameters_cell(cells[0].source, path.name), tuple(outputs)
    )


def read_contract(path: str | Path) -> RecipeContract:
    """The contract of the recipe at ``path``."""
    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"no recipe at {path}")
    return _read_contract_cached(path, path.stat().st_mtime_ns)
