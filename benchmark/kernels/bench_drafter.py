"""The shipped drafter's `propose` on real contexts: full vocabulary vs its draft vocabulary, and alg1's
survival-floor pruning.

For R requests (first turns of a prompt set, prefilled by the HF target so the confidences are real), one
`propose` call, greedy, fp32, median of --iters: (a) the full block over the whole vocabulary (γ lm_head
rows of V per request), (b) the same over the drafter's draft vocabulary (`draft_vocab.json`), (c) (b)
pruned at the admission floor alg1 would use with the given SPS table (the profile the server cached, or
--sps-table). Prints ms, the ratios to (a) and the share of slots still drafted.

    python benchmark/kernels/bench_drafter.py --reqs 1,4,16,64 --threads 2

--dtype bfloat16 runs the drafter as a bf16 CPU server does (its linears and draft-vocabulary heads through
packed_linear where that has a vector face). --head-rows A,B,... then times (c) once per value of
`drafter.model.HEAD_ROWS_PER_CALL` (rows per draft-head call in pruned drafting), the settings taking turns
within every iteration so that host drift hits them alike:

    python benchmark/kernels/bench_drafter.py --reqs 1,4,8,16 --dtype bfloat16 --head-rows 1000000,12,1
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drafter", default=str(ROOT / "dspark_sglang/assets/drafters/smollm2-135m-dspark"))
    p.add_argument("--dataset", default=str(ROOT.parent / "shared/datasets/humaneval.jsonl"))
    p.add_argument("--reqs", default="1,4,16,64")
    p.add_argument("--sps-table", default=None, help="JSON {batch_rows, step_seconds} (default: the newest cached profile)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--head-rows", default=None,
                   help="comma list of HEAD_ROWS_PER_CALL values to time (c) with, paired (default: the shipped one)")
    a = p.parse_args(argv)
    import torch
    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    from dspark_sglang import config as dspark_config
    from dspark_sglang.evaluation.datasets import encode_chat, load_first_turns
    from dspark_sglang.evaluation.drafters import load_drafter_for
    from dspark_sglang.models import smollm2_path
    from dspark_sglang.sampling import SamplingBatch
    from dspark_sglang.scheduling import admission_floor, sps_table_from_points
    from dspark_sglang.serving.sps_profile import load_sts
    from dspark_sglang.target import HFTarget
    from transformers import DynamicCache

    sps_path = a.sps_table
    if sps_path is None:
        cached = sorted((Path(dspark_config.cache_dir()) / "sps").glob("*.json"), key=lambda f: f.stat().st_mtime)
        if not cached:
            p.error("no cached SPS profile: start a DSPARK server once or pass --sps-table")
        sps_path = str(cached[-1])
    points = json.loads(Path(sps_path).read_text())
    reqs_list = [int(r) for r in a.reqs.split(",")]
    drafter_cfg = json.loads((Path(a.drafter) / "config.json").read_text())
    gamma = drafter_cfg["block_size"]
    table = sps_table_from_points(points["batch_rows"], points["step_seconds"], max(reqs_list) * (gamma + 1))
    temps = load_sts(None, gamma, a.drafter)                  # what the worker uses: the drafter's sts.json

    model = str(smollm2_path())
    target = HFTarget.from_pretrained(model, drafter_cfg["target_layer_ids"])
    import dspark_sglang.drafter.model as drafter_model
    from dspark_sglang.drafter.packed_inference import pack_for_inference

    dtype = getattr(torch, a.dtype)
    drafter = load_drafter_for(a.drafter, target, dtype=dtype)
    packed = pack_for_inference(drafter) if dtype == torch.bfloat16 else 0
    head_rows = ([int(v) for v in a.head_rows.split(",")] if a.head_rows
                 else [drafter_model.HEAD_ROWS_PER_CALL])
    tok = AutoTokenizer.from_pretrained(model)
    prompts = load_first_turns(a.dataset, max(reqs_list))
    feats, anchors = [], []
    for text in prompts:                                     # real contexts: the target's features of each prompt
        ids = encode_chat(tok, text)
        logits, hidden = target.forward(ids[None], torch.arange(ids.numel())[None], DynamicCache())
        feats.append(hidden[0].float())
        anchors.append(int(logits[0, -1].argmax()))
    vocab_n = "full" if drafter.draft_vocab_ids is None else drafter.draft_vocab_ids.numel()
    print(f"SPS table {sps_path}; γ={gamma}; draft vocabulary {vocab_n}; {a.dtype} ({packed} packed linears); "
          f"STS {[round(t, 3) for t in temps.tolist()]}")
    pruned_cols = "".join(f" {'(c) rows ' + str(v):>16}" for v in head_rows)
    print(f"{'R':>4} {'floor':>7} {'full V ms':>10} {'draft V ms':>11}{pruned_cols} {'(a)/(b)':>8} "
          f"{'(a)/(c)':>8} {'slots drafted':>14}")
    draft_vocab = drafter.draft_vocab_ids
    for num in reqs_list:
        cache = drafter.new_cache(num)
        for r in range(num):
            f = feats[r % len(feats)]
            drafter.append_context(cache, r, f, torch.arange(f.shape[0]))
        anchor_ids = torch.tensor([anchors[r % len(anchors)] for r in range(num)])
        positions = torch.tensor([feats[r % len(feats)].shape[0] for r in range(num)])
        sampling = SamplingBatch.greedy(num)
        floor = admission_floor("alg1", table, num, 0, gamma)

        def run(vocab):
            """(a) or (b): the whole block, unpruned, over `vocab`; median seconds and the last block."""
            drafter.set_draft_vocab(vocab)
            drafter.propose(cache, anchor_ids, positions, sampling, need_probs=False)       # warm-up
            times = []
            for _ in range(a.iters):
                t = time.perf_counter()
                block = drafter.propose(cache, anchor_ids, positions, sampling, need_probs=False)
                times.append(time.perf_counter() - t)
            return statistics.median(times), block

        def run_pruned():
            """(c) for every --head-rows value, taking turns each iteration; median seconds per value."""
            drafter.set_draft_vocab(draft_vocab)
            times = {v: [] for v in head_rows}
            for it in range(a.iters + 1):                     # the first round warms up
                for v in head_rows:
                    drafter_model.HEAD_ROWS_PER_CALL = v
                    t = time.perf_counter()
                    block = drafter.propose(cache, anchor_ids, positions, sampling, need_probs=False,
                                            survival_floor=floor, sts_temperatures=temps)
                    if it:
                        times[v].append(time.perf_counter() - t)
            return [statistics.median(times[v]) for v in head_rows], block

        full_s, _ = run(None)
        sub_s, _ = run(draft_vocab)
        pruned, block = run_pruned()
        drafted = float(torch.isfinite(block.conf_logits).float().mean()) if floor > 0 else 1.0
        pruned_txt = "".join(f" {1e3 * t:>16.2f}" for t in pruned)
        print(f"{num:>4} {floor:>7.4f} {1e3 * full_s:>10.2f} {1e3 * sub_s:>11.2f}{pruned_txt} "
              f"{full_s / sub_s:>7.2f}× {full_s / pruned[-1]:>7.2f}× {100 * drafted:>13.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
