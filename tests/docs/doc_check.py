"""Static checks of docs blocks that cannot run in CI: CLI flags parse, named files/modules/extras exist, Python compiles.

Each function returns a list of problems (empty = fine), each naming the block's place in docs/.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import re
import shlex
import tomllib

from .doc_blocks import REPO, Block, shell_commands

SEPARATORS = {"&&", "||", ";", "|", "&"}
EXTRA = re.compile(r"^(?:shadow-edge|\.)\[([\w,-]+)\]$")


def extras() -> set[str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return set(data["project"]["optional-dependencies"])


def parse_cli(argv: list[str]) -> str | None:
    """Parse `shadow-edge ARGV` with the real parsers (bench and serve have their own); None if it parses."""
    from shadow_edge import cli

    if argv[:1] == ["bench"]:
        from shadow_edge.bench.cli import build_parser
        parser, rest = build_parser(), argv[1:]
    elif argv[:1] == ["serve"]:
        from shadow_edge.serve.cli import build_parser
        parser, rest = build_parser(), argv[1:]
    else:
        parser, rest = cli.build_parser(), argv
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(rest)
    except SystemExit as e:
        if e.code not in (0, None):
            return err.getvalue().strip() or f"exit {e.code}"
    return None


def _module_exists(name: str) -> bool:
    rel = REPO / name.replace(".", "/")
    if rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file() or (rel / "__main__.py").is_file():
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def check_command(argv: list[str]) -> str | None:
    """One simple command of a check block: what is wrong with it, or None."""
    while argv and re.match(r"^\w+=", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        return None
    prog = argv[0].rsplit("/", 1)[-1]
    if prog == "shadow-edge":
        return parse_cli(argv[1:])
    if prog in ("python", "python3"):
        if argv[1:2] == ["-c"]:
            try:
                compile(argv[2], "<python -c>", "exec")
            except SyntaxError as e:
                return f"python -c does not compile: {e}"
            return None
        if argv[1:2] == ["-m"]:
            if argv[2] == "pip":
                return check_command(["pip", *argv[3:]])
            return None if _module_exists(argv[2]) else f"no module {argv[2]}"
        return None if (REPO / argv[1]).is_file() else f"no file {argv[1]} in the repository"
    if prog in ("bash", "sh"):
        return None if (REPO / argv[1]).is_file() else f"no file {argv[1]} in the repository"
    if prog in ("pip", "pip3") and argv[1:2] == ["install"]:
        for arg in argv[2:]:
            m = EXTRA.match(arg)
            if m:
                missing = set(m.group(1).split(",")) - extras()
                if missing:
                    return f"no extra {sorted(missing)} in pyproject.toml"
    return None


def check_shell(block: Block) -> list[str]:
    problems = []
    for line in shell_commands(block.code):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as e:
            problems.append(f"{block.where}: cannot split {line!r}: {e}")
            continue
        cmd: list[str] = []
        for tok in [*tokens, ";"]:
            if tok in SEPARATORS:
                problem = check_command(cmd) if cmd else None
                if problem:
                    problems.append(f"{block.where}: `{line}`: {problem}")
                cmd = []
            else:
                cmd.append(tok)
    return problems


def check_python(block: Block) -> list[str]:
    try:
        tree = ast.parse(block.code, filename=block.where)
    except SyntaxError as e:
        return [f"{block.where}: does not compile: {e}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shadow_edge"):
            try:
                mod = importlib.import_module(node.module)
            except ImportError as e:
                problems.append(f"{block.where}: from {node.module} import ...: {e}")
                continue
            problems += [f"{block.where}: {node.module} has no {a.name}" for a in node.names if not hasattr(mod, a.name)]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("shadow_edge") and not _module_exists(a.name):
                    problems.append(f"{block.where}: no module {a.name}")
    return problems


def cli_flags() -> dict[str, set[str]]:
    """Every long option of every `shadow-edge` subcommand (bench and serve from their own parsers)."""
    import argparse

    from shadow_edge import cli
    from shadow_edge.bench.cli import build_parser as bench_parser
    from shadow_edge.serve.cli import build_parser as serve_parser

    def flags(parser: argparse.ArgumentParser) -> set[str]:
        return {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    out = {name: flags(p) for name, p in sub.choices.items() if name not in ("bench", "serve")}
    out["bench"], out["serve"] = flags(bench_parser()), flags(serve_parser())
    return out
