"""No function in cifake/ takes more than 8 parameters (``self``/``cls`` not counted; ``*args`` and
``**kwargs`` one each): settings travel as typed objects (e.g. cifake.evaluation.settings.EvaluationSettings),
not as long argument lists. The classes conf/ names in a ``_target_`` (the data module, the classifier, its
networks) take their node's keys as ``**settings`` and read them into typed groups (cifake.core.nodes)."""

from __future__ import annotations

import ast
from pathlib import Path

import cifake

MAX_PARAMETERS = 8


def parameter_count(args: ast.arguments) -> int:
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    bound = 1 if names and names[0] in ("self", "cls") else 0
    return len(names) - bound + (args.vararg is not None) + (args.kwarg is not None)


def wide_functions() -> dict[str, int]:
    """``path:Qualified.name`` -> parameter count, for every function of the package over the limit."""
    package = Path(cifake.__file__).parent
    wide = {}
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

        def visit(node: ast.AST, prefix: str, path: Path = path) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = parameter_count(child.args)
                    if n > MAX_PARAMETERS:
                        wide[f"{path.relative_to(package.parent).as_posix()}:{prefix}{child.name}"] = n
                    visit(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return wide


def test_no_function_takes_more_than_eight_parameters() -> None:
    wide = wide_functions()
    assert not wide, "more than 8 parameters (group them in a typed settings object): " + ", ".join(
        f"{name} ({n})" for name, n in sorted(wide.items()))
