"""Training prompts: the FREE lines of the benchmark files plus coding prompts built from real source.

Evaluations use the FIRST N lines of each benchmark file (shared/datasets/README.md), so training may
use only the lines after them (`EVAL_PREFIX`). Files whose lines are all evaluated (humaneval,
mt-bench, math500, aime25) contribute nothing. Coding prompts come from the Python standard library
found offline under `sys.prefix/lib/pythonX.Y`: functions taken with `ast` and turned into "explain",
"complete" (truncated body) and "find and fix the bug" (one injected small bug) prompts.
"""
from __future__ import annotations

import ast
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

EVAL_PREFIX = {"gsm8k": 500, "humaneval": 164, "mbpp": 256, "mt-bench": 80, "math500": 500, "aime25": 30}
"""Lines of each benchmark file that evaluations use (never train on them). Unlisted files are free."""


@dataclass(frozen=True)
class Prompt:
    """One training prompt; `uid` is stable across runs (the resumability key)."""

    uid: str
    source: str
    text: str


def free_dataset_prompts(datasets_dir: str | Path) -> list[Prompt]:
    """First turns of every line after the evaluated prefix of each `*.jsonl` in `datasets_dir`."""
    out: list[Prompt] = []
    for path in sorted(Path(datasets_dir).glob("*.jsonl")):
        skip = EVAL_PREFIX.get(path.stem, 0)
        with path.open() as f:
            for line_no, line in enumerate(f):
                if line_no < skip or not line.strip():
                    continue
                turns = json.loads(line).get("turns") or []
                if turns and isinstance(turns[0], str) and turns[0].strip():
                    out.append(Prompt(f"{path.stem}:{line_no}", path.stem, turns[0]))
    return out


# ---------------------------------------------------------------------------- code prompts
_BUG_SWAPS = (("<=", "<"), ("<", "<="), (">=", ">"), (">", ">="), ("==", "!="), ("!=", "=="),
              (" + 1", " - 1"), (" - 1", " + 1"), (" and ", " or "), (" or ", " and "),
              ("True", "False"), ("False", "True"), ("[0]", "[1]"), ("[-1]", "[0]"))


def inject_bug(source: str, rng: random.Random) -> str | None:
    """`source` with ONE small bug (a flipped comparison / off-by-one / boolean); None if none applies."""
    lines = source.splitlines()
    candidates = [(i, a, b) for i, line in enumerate(lines[1:], start=1) if not line.strip().startswith("#")
                  for a, b in _BUG_SWAPS if a in line]
    if not candidates:
        return None
    i, a, b = rng.choice(candidates)
    lines[i] = lines[i].replace(a, b, 1)
    return "\n".join(lines)


def stdlib_functions(lib_dir: str | Path | None = None, min_lines: int = 6, max_lines: int = 40,
                     limit: int | None = None) -> list[tuple[str, str]]:
    """(qualified name, source) of top-level and method functions of the stdlib's .py files."""
    lib = Path(lib_dir) if lib_dir else Path(sys.prefix).resolve() / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if not (lib / "os.py").is_file():                         # venvs: sys.prefix has no stdlib sources
        lib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    out: list[tuple[str, str]] = []
    for file in sorted(lib.glob("*.py")):
        try:
            text = file.read_text(encoding="utf-8")
            tree = ast.parse(text)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("__"):
                src = ast.get_source_segment(text, node)
                if src and min_lines <= src.count("\n") + 1 <= max_lines and "\t" not in src:
                    out.append((f"{file.stem}.{node.name}", src))
        if limit is not None and len(out) >= limit:
            break
    return out


def code_prompts(num: int, seed: int = 0, lib_dir: str | Path | None = None) -> list[Prompt]:
    """`num` coding prompts (explain / complete / fix) from stdlib functions, deterministic in `seed`."""
    rng = random.Random(seed)
    funcs = stdlib_functions(lib_dir)
    rng.shuffle(funcs)
    out: list[Prompt] = []
    for i, (name, src) in enumerate(funcs):
        if len(out) >= num:
            break
        kind = ("explain", "complete", "fix")[i % 3]
        if kind == "explain":
            text = f"Explain what this Python function does, step by step:\n\n```python\n{src}\n```"
        elif kind == "complete":
            lines = src.splitlines()
            cut = max(2, len(lines) // 2)
            text = ("Complete the following Python function. Write the whole function.\n\n```python\n"
                    + "\n".join(lines[:cut]) + "\n```")
        else:
            buggy = inject_bug(src, rng)
            if buggy is None:
                continue
            text = f"The following Python function has a bug. Find the bug and write the fixed function.\n\n```python\n{buggy}\n```"
        out.append(Prompt(f"code:{name}:{kind}", f"code-{kind}", text))
    return out


_CHAT_TASKS = (
    "Write a short blog post about {t}.", "Explain {t} to a ten-year-old.", "Give me five tips about {t}.",
    "Write a persuasive paragraph arguing for {t}.", "What are the pros and cons of {t}?",
    "Summarise the history of {t} in a few sentences.", "Write a short poem about {t}.",
    "Pretend you are a tour guide and describe {t}.", "Compare {t} with a similar idea and list the differences.",
    "Draft a polite email to a colleague about {t}.", "What questions should a beginner ask about {t}?",
    "Give a step-by-step plan to learn about {t}.",
    # mt-bench's other categories: roleplay, extraction, reasoning, STEM, humanities.
    "Act as a famous scientist and answer a journalist's questions about {t}.",
    "Imagine you are a teacher. Write three quiz questions about {t} with their answers.",
    "List the key facts about {t} as a JSON object with short string values.",
    "Write a dialogue between two friends who disagree about {t}.",
    "Describe a common misconception about {t} and explain why it is wrong.",
    "Explain the causes and effects of {t} in a structured answer with headings.",
    "Write a short story in which {t} plays an important role.",
    "How would you explain {t} in exactly three sentences? Then give an analogy.",
    "Create a table comparing three aspects of {t}.",
    "Write a product review as if {t} were something you could buy.",
    "What would change in everyday life without {t}? Reason step by step.",
    "Suggest a title and an outline for a presentation about {t}.",
)
_CHAT_TOPICS = (
    "renewable energy", "the French Revolution", "photosynthesis", "remote work", "electric cars", "black holes",
    "healthy sleep", "the stock market", "learning a second language", "climate change", "the Roman Empire",
    "machine learning", "public libraries", "volcanoes", "city gardening", "the immune system", "chess openings",
    "saving money", "the water cycle", "social media", "ancient Egypt", "quantum computers", "marathon training",
    "coffee", "the printing press", "honeybees", "time management", "the Moon landing", "recycling plastic",
    "jazz music", "job interviews", "the human brain", "cloud computing", "the Olympic Games", "deserts",
    "vaccines", "board games", "inflation", "rainforests", "open-source software",
    "the Industrial Revolution", "plate tectonics", "democracy", "the theory of evolution", "urban traffic",
    "classical music", "the internet", "antibiotics", "ocean tides", "the Renaissance", "solar panels",
    "mindfulness", "supply and demand", "genetics", "space exploration", "the Silk Road", "nuclear power",
    "team sports", "cybersecurity", "the periodic table",
)


def chat_prompts(num: int, seed: int = 0) -> list[Prompt]:
    """`num` general chat prompts (writing, explanation, advice, roleplay) from task x topic templates: the
    free benchmark lines hold no chat data (mt-bench is fully evaluated)."""
    pairs = [(i, j) for i in range(len(_CHAT_TASKS)) for j in range(len(_CHAT_TOPICS))]
    random.Random(seed + 2).shuffle(pairs)
    return [Prompt(f"chat:{i}:{j}", "chat", _CHAT_TASKS[i].format(t=_CHAT_TOPICS[j])) for i, j in pairs[:num]]


def training_prompts(datasets_dir: str | Path, num_code: int, seed: int = 0, num_chat: int = 0) -> list[Prompt]:
    """Free benchmark lines + `num_code` code + `num_chat` chat prompts, shuffled (so any done prefix is a
    domain mix)."""
    prompts = free_dataset_prompts(datasets_dir) + code_prompts(num_code, seed) + chat_prompts(num_chat, seed)
    random.Random(seed).shuffle(prompts)
    return prompts
