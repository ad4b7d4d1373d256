"""python/reproduce_default_drafter.sh: every command it runs parses with today's command-line tools, and it
reproduces what the shipped drafter's config says (rank, Markov rows, draft vocabulary size)."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from test.unit.test_training_server_generation import _train_drafter_cli

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "python" / "reproduce_default_drafter.sh"
SHIPPED = ROOT / "dspark_sglang" / "assets" / "drafters" / "smollm2-135m-dspark"


def _commands() -> list[list[str]]:
    """The script's `$PY ...` lines, continuations joined, comments dropped, variables filled in."""
    text = re.sub(r"\\\n\s*", " ", SCRIPT.read_text())
    subs = {'"${TRAIN[@]}"': "python/train_drafter.py", '"${FLAGS[@]}"': "--preset smollm2-v2 --work-dir W",
            '"$W': '"W', '"$D"': "D"}
    out = []
    for line in text.splitlines():
        if line.startswith("$PY "):
            for k, v in subs.items():
                line = line.replace(k, v)
            out.append(shlex.split(line, comments=True)[1:])
    return out


def test_every_line_parses_and_the_last_training_run_matches_the_shipped_config():
    from dspark_sglang.training.pipeline import resolve_preset
    cli = _train_drafter_cli()
    commands = _commands()
    trains = [c for c in commands if c[0] == "python/train_drafter.py"]
    assert [c[1] for c in trains] == ["generate", "features", "train", "repo", "features", "train"]
    presets = [resolve_preset(cli.parse_args(c[1:])) for c in trains]
    final = presets[-1]
    shipped = json.loads((SHIPPED / "config.json").read_text())
    vocab = json.loads((SHIPPED / "draft_vocab.json").read_text())
    assert final.drafter["markov_rank"] == shipped["markov_rank"]
    assert final.markov_rows == shipped.get("markov_rows", "full")
    assert final.draft_vocab_size == len(vocab)
    assert final.drafter["target_layer_ids"] == shipped["target_layer_ids"]
    assert final.drafter["mask_token_id"] == shipped["mask_token_id"]
    assert cli.parse_args(trains[-1][1:]).init_from == cli.parse_args(trains[2][1:]).out    # fine-tunes the base
    fit = [c for c in commands if c[0] == "python/fit_sts.py"]
    assert len(fit) == 1 and cli.parse_args(trains[-1][1:]).out == fit[0][fit[0].index("--drafter") + 1]
    fit_source = (ROOT / "python" / "fit_sts.py").read_text()
    assert all(f'"{flag}"' in fit_source for flag in fit[0] if flag.startswith("--"))
