"""Configuration flows one way: the run config becomes a `RunConfig` at the edges (the ServerApp and
ClientApp in server/ and client/, each command in fedseqrec/), and the library below them, common/,
takes the values it uses. Only the config layer reads a `RunConfig` there: the config itself, its
domains, `common.recipes` (the run config translated into each stage's values) and the pinning of a
run's input files (`common.data.run_inputs`, which rewrites a config's paths)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG_LAYER = {"common/config.py", "common/config_domains.py", "common/recipes.py", "common/data/run_inputs.py"}


def _takes_run_config(source: str, name: str) -> list[str]:
    """Functions in `source` (the module `name`) with a parameter annotated RunConfig (or a string naming it)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        args = node.args
        for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
            if arg is not None and arg.annotation is not None and "RunConfig" in ast.unparse(arg.annotation):
                found.append(f"{name}:{node.lineno} {node.name}({arg.arg})")
    return found


def test_the_library_below_the_edges_takes_values_not_the_run_config():
    offenders = [
        where
        for path in sorted((ROOT / "common").rglob("*.py"))
        if str(path.relative_to(ROOT)) not in CONFIG_LAYER
        for where in _takes_run_config(path.read_text(), str(path.relative_to(ROOT)))
    ]
    assert not offenders, (
        "these common/ functions take the whole RunConfig; pass the values they use (build them in "
        f"common/recipes.py at the edge): {offenders}"
    )


def test_the_check_sees_a_function_that_takes_the_run_config():
    source = "def f(x: int, config: 'RunConfig') -> None: ...\n\n\ndef g(*, c: RunConfig | None = None): ...\n"
    assert _takes_run_config(source, "m.py") == ["m.py:1 f(config)", "m.py:4 g(c)"]
    assert _takes_run_config("def f(model: ModelSettings, seed: int): ...\n", "m.py") == []
