"""Stages behind `python/train_drafter.py`: generate -> repo -> features -> train (each resumable)."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from dspark_sglang.training.presets import PRESETS, Preset, dflash_ablation

ANSWERS_FILE = "answers.jsonl"
REPO_ANSWERS_FILE = "repo_answers.jsonl"
"""On-policy answers to the long-context repository prompts (`training.repository_prompts`)."""
FEATURES_DIR = "features"


def resolve_preset(args) -> Preset:
    preset = PRESETS[args.preset]
    overrides = {k: getattr(args, k) for k in ("num_code", "num_chat", "max_prompts", "gen_batch_size", "max_new_tokens",
                                                 "steps", "lr", "num_repo_prompts", "holdout", "confidence_detached",
                                                 "markov_rows", "draft_vocab_size")
                 if getattr(args, k, None) is not None}
    if getattr(args, "markov_rank", None) is not None:
        overrides["drafter"] = dict(preset.drafter, markov_rank=args.markov_rank)
    preset = replace(preset, **overrides)
    return dflash_ablation(preset) if getattr(args, "ablation", "dspark") == "dflash" else preset


def load_target(path: str | None, device: str = "cpu"):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if path is None:
        from dspark_sglang.models import smollm2_path
        path = str(smollm2_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
    return model, tok, path


def stage_generate(args, preset: Preset, model, tok) -> list[dict]:
    from dspark_sglang.training.data import GenerationConfig, answer_eos_ids, generate_answers
    from dspark_sglang.training.prompts import training_prompts
    prompts = training_prompts(args.datasets_dir, preset.num_code, seed=args.seed, num_chat=preset.num_chat)
    cfg = GenerationConfig(max_new_tokens=preset.max_new_tokens, batch_size=preset.gen_batch_size, seed=args.seed)
    if preset.num_code_references:                     # cheap (no generation): first
        from dspark_sglang.training.data import REFERENCES_FILE, reference_code_records
        refs = reference_code_records(tok, preset.num_code_references, seed=args.seed)
        with open(Path(args.work_dir) / REFERENCES_FILE, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in refs)
    shard = Path(args.work_dir) / ANSWERS_FILE
    eos_ids = answer_eos_ids(model, tok)
    if preset.gen_backend == "sglang":
        return _generate_via_server(args, preset, tok, prompts, shard, cfg, eos_ids, preset.max_prompts,
                                    preset.gen_batch_size)
    if preset.gen_backend != "hf":
        raise ValueError(f"preset gen_backend {preset.gen_backend!r}: use 'hf' or 'sglang'")
    gen_model = model.to(getattr(torch, preset.gen_dtype))
    records = generate_answers(gen_model, tok, prompts, shard, cfg, max_prompts=preset.max_prompts)
    model.to(torch.float32)                         # features and training read the float32 target
    return records


def _generate_via_server(args, preset: Preset, tok, prompts, shard: Path, cfg, eos_ids, max_prompts, concurrency):
    from dspark_sglang.serving.launcher import launched
    from dspark_sglang.training.server_generation import generate_answers_via_server
    flags = ["--dtype", preset.gen_dtype, "--max-running-requests", str(concurrency)]
    device = "cpu" if args.device == "cpu" else "cuda"
    with launched(args.target_path, flags, Path(args.work_dir) / "gen_server.log", device=device) as base:
        return generate_answers_via_server(base, tok, prompts, shard, cfg, eos_ids, max_prompts=max_prompts,
                                           concurrency=concurrency)


def repo_exclusions(sessions_file: str | Path | None) -> set[str]:
    """Module paths pasted anywhere in an evaluation sessions file (benchmark/sessions schema)."""
    if not sessions_file or not Path(sessions_file).is_file():
        return set()
    from dspark_sglang.evaluation.coding_sessions import read_sessions, session_files
    return {f["path"] for session in read_sessions(sessions_file) for f in session_files(session)}


def stage_repo(args, preset: Preset, model, tok) -> list[dict]:
    """On-policy answers to `preset.num_repo_prompts` long-context repository prompts (own shard)."""
    if not preset.num_repo_prompts:
        return []
    from dspark_sglang.training.data import GenerationConfig, answer_eos_ids, generate_answers
    from dspark_sglang.training.repository_prompts import repository_prompts
    exclude = repo_exclusions(getattr(args, "repo_exclude_sessions", None))
    prompts = repository_prompts(preset.num_repo_prompts, args.datasets_dir, exclude, seed=args.seed)
    limit = int(getattr(model.config, "max_position_embeddings", 8192)) - preset.max_new_tokens
    cfg = GenerationConfig(max_new_tokens=preset.max_new_tokens, batch_size=preset.repo_batch_size, seed=args.seed,
                           max_prompt_tokens=limit)                  # long by design: only the context window bounds them
    shard = Path(args.work_dir) / REPO_ANSWERS_FILE
    eos_ids = answer_eos_ids(model, tok)
    print(f"repo: {len(prompts)} prompts, {len(exclude)} evaluation modules excluded")
    if preset.gen_backend == "sglang":
        return _generate_via_server(args, preset, tok, prompts, shard, cfg, eos_ids, None, preset.repo_batch_size)
    return generate_answers(model, tok, prompts, shard, cfg)


def stage_features(args, preset: Preset, model) -> dict:
    from dspark_sglang.training.data import read_shard
    from dspark_sglang.training.features import build_feature_cache
    from dspark_sglang.training.data import REFERENCES_FILE
    work = Path(args.work_dir)
    records = read_shard(work / ANSWERS_FILE) + read_shard(work / REFERENCES_FILE) + read_shard(work / REPO_ANSWERS_FILE)
    meta = build_feature_cache(model, records, Path(args.work_dir) / FEATURES_DIR, preset.drafter["target_layer_ids"],
                               batch_tokens=preset.feature_batch_tokens)
    print(json.dumps({k: meta[k] for k in ("bytes_per_token", "total_tokens", "total_bytes", "num_sequences")}))
    return meta


def stage_train(args, preset: Preset, model, target_path: str) -> None:
    from dspark_sglang.training.trainer import TrainConfig, train
    run = args.run_name or args.ablation
    cfg = TrainConfig.from_preset(preset, seed=args.seed, device=args.device,
                                  time_budget_s=args.time_budget_min * 60 if args.time_budget_min else None,
                                  long_seq_share=getattr(args, "long_seq_share", None))
    train(model, Path(args.work_dir) / FEATURES_DIR, Path(args.work_dir) / "runs" / run, cfg, out_dir=args.out,
          init_from=getattr(args, "init_from", None))


def run_stage(stage: str, args) -> None:
    from dspark_sglang.training.target_fit import fit_drafter_to_target
    preset = resolve_preset(args)
    model, tok, target_path = load_target(args.target)
    preset = replace(preset, drafter=fit_drafter_to_target(preset.drafter, model.config.to_dict(), tok,
                                                           getattr(args, "target_layer_ids", None),
                                                           getattr(args, "mask_token_id", None)))
    args.target_path = target_path
    start = time.perf_counter()
    if stage in ("generate", "all"):
        stage_generate(args, preset, model, tok)
    if stage in ("repo", "all"):
        stage_repo(args, preset, model, tok)
    if stage in ("features", "all"):
        stage_features(args, preset, model)
    if stage in ("train", "all"):
        stage_train(args, preset, model, target_path)
    print(f"{stage}: done in {time.perf_counter() - start:.0f} s")
