"""Long-context training prompts: a task about a small "repository" pasted into the prompt.

The drafter reads the target's features of the whole context, but the short training prompts
(`prompts.training_prompts`: ≤ 750 tokens) never show it a context of coding-assistant size, where the
answer quotes, tests or refactors code thousands of tokens back. These prompts paste whole top-level
functions of two or three standard-library modules (found offline) and ask about one function of them:
write unittest tests, add type hints and a docstring, refactor it, explain it line by line, or solve a
free mbpp task inside the repository. Each is sized to `min_chars`..`max_chars` of user text
(≈ 2.5k–5k target tokens).

Modules named in `exclude` (the evaluation sessions' files, see `benchmark/sessions/`) are never used,
so evaluation sessions never see a module the drafter was trained on as context.
"""
from __future__ import annotations

import ast
import random
import re
import sys
from pathlib import Path

from dspark_sglang.training.prompts import EVAL_PREFIX, Prompt, free_dataset_prompts


def files_block(files: list[dict]) -> str:
    """Files as the user pastes them: `### path` then a python fenced block, blank-line separated."""
    return "\n\n".join(f"### {f['path']}\n```python\n{f['content']}\n```" for f in files)


def module_excerpt(path: Path, max_chars: int) -> str | None:
    """The module's whole public top-level functions, in file order, up to `max_chars` (None if < 2)."""
    try:
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    parts: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            seg = ast.get_source_segment(text, node)
            if seg and "\t" not in seg and sum(map(len, parts)) + len(seg) <= max_chars:
                parts.append(seg)
    return "\n\n\n".join(parts) if len(parts) >= 2 else None


def stdlib_dir() -> Path:
    """This Python's standard-library sources (venvs: the base interpreter's)."""
    base = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not (base / "os.py").is_file():
        raise FileNotFoundError(f"no standard-library sources under {base}")
    return base


def stdlib_modules(exclude: set[str], max_chars: int = 9000, min_chars: int = 2500,
                   lib_dir: Path | None = None) -> list[tuple[str, str]]:
    """(relative path, excerpt) of top-level and one-level package modules, minus `exclude` (relative
    paths such as "textwrap.py"), with excerpts of at least `min_chars`."""
    lib = lib_dir or stdlib_dir()
    files = sorted(lib.glob("*.py")) + sorted(p for p in lib.glob("*/*.py")
                                              if p.parent.name not in ("test", "idlelib", "site-packages")
                                              and "test" not in p.stem)
    out = []
    for path in files:
        rel = path.relative_to(lib).as_posix()
        if rel in exclude:
            continue
        excerpt = module_excerpt(path, max_chars)
        if excerpt and len(excerpt) >= min_chars:
            out.append((rel, excerpt))
    return out


_TASKS = (
    ("tests", "Write unit tests for `{name}` from `{path}` with the unittest module. Cover normal use and the "
              "edge cases, and show the complete test file."),
    ("typed", "Add type hints and a Google-style docstring to `{name}` in `{path}`. Show the whole updated "
              "function."),
    ("refactor", "Refactor `{name}` in `{path}` for readability without changing its behaviour. Show the "
                 "complete new version, then list what you changed."),
    ("explain", "Explain what `{name}` in `{path}` does, walking through its code line by line."),
)


def repository_prompts(num: int, datasets_dir: str | Path | None = None, exclude: set[str] | frozenset = frozenset(),
                       seed: int = 0, min_chars: int = 9000, max_chars: int = 17000,
                       lib_dir: Path | None = None) -> list[Prompt]:
    """`num` long-context coding prompts, deterministic in `seed` (uids `repo:<i>:<kind>`).

    One in five asks for a free mbpp task (lines past its evaluated prefix) as a new module of the
    repository, when `datasets_dir` has mbpp.jsonl; the others are about one function of the files."""
    rng = random.Random(seed + 7)
    modules = stdlib_modules(set(exclude), lib_dir=lib_dir)
    if len(modules) < 3:
        raise ValueError(f"only {len(modules)} standard-library modules left after excluding {len(exclude)}; "
                         "need at least 3")
    mbpp = [p for p in free_dataset_prompts(datasets_dir) if p.source == "mbpp"] if datasets_dir else []
    assert not mbpp or all(int(p.uid.split(":")[1]) >= EVAL_PREFIX["mbpp"] for p in mbpp)
    out: list[Prompt] = []
    attempts = 0
    while len(out) < num and attempts < 50 * max(num, 1):
        attempts += 1
        files = [{"path": p, "content": c} for p, c in rng.sample(modules, rng.choice((2, 3)))]
        block = files_block(files)
        if not min_chars <= len(block) <= max_chars:
            continue
        i = len(out)
        if mbpp and i % 5 == 4:
            task, kind = mbpp[rng.randrange(len(mbpp))].text + (
                "\n\nWrite the solution in a new module `solution.py` of this repository, reusing its helpers "
                "where they fit."), "mbpp"
        else:
            target = rng.choice(files)
            names = re.findall(r"^def (\w+)\s*\(", target["content"], flags=re.M)
            kind, template = _TASKS[i % len(_TASKS)]
            task = template.format(name=rng.choice(names), path=target["path"])
        out.append(Prompt(f"repo:{i}:{kind}", f"repo-{kind}", f"Repository files:\n\n{block}\n\n{task}"))
    if len(out) < num:
        raise ValueError(f"built only {len(out)} of {num} repository prompts in the {min_chars}-{max_chars} "
                         "character range; widen it")
    return out
