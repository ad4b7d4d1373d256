"""What one speculative step costs next to a plain step, piece by piece, on one device.

A random-weight target with SmolLM2-135M's architecture (taken from the drafter's config: the timings do
not depend on the weights' values, so no model download is needed) and the shipped drafter's real
weights. For R requests with a C-token context, median ms (`bench_ops.median_us`: CUDA events on a GPU)
of: the target's decode forward (1 row per request), its verify forward (γ+1 rows per request), the
drafter's `propose` (greedy, draft vocabulary) and the verify op; then (propose + verify forward + verify
op) / decode forward, the cost of a drafted step in plain steps. HF eager forwards without CUDA graphs: on a GPU this is the launch-bound upper end of what
SGLang's graph-captured forwards cost.

    python benchmark/kernels/bench_device_costs.py --device cuda --reqs 1,8,32 --context 512
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmark.kernels.bench_ops import median_us  # noqa: E402


def random_target(drafter_cfg: dict, dtype: torch.dtype, device: str):
    """LlamaForCausalLM with the target architecture the drafter config records, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dspark_sglang.target import HFTarget
    cfg = LlamaConfig(hidden_size=drafter_cfg["hidden_size"], intermediate_size=drafter_cfg["intermediate_size"],
                      num_hidden_layers=drafter_cfg["num_target_layers"],
                      num_attention_heads=drafter_cfg["num_attention_heads"],
                      num_key_value_heads=drafter_cfg["num_key_value_heads"], head_dim=drafter_cfg["head_dim"],
                      vocab_size=drafter_cfg["vocab_size"], rms_norm_eps=drafter_cfg["rms_norm_eps"],
                      rope_theta=drafter_cfg["rope_theta"], max_position_embeddings=8192, tie_word_embeddings=True,
                      bos_token_id=drafter_cfg["bos_token_id"], eos_token_id=drafter_cfg["eos_token_id"],
                      pad_token_id=drafter_cfg["pad_token_id"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    return HFTarget(model.to(device=device, dtype=dtype).eval(), drafter_cfg["target_layer_ids"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--drafter", default=str(ROOT / "dspark_sglang/assets/drafters/smollm2-135m-dspark"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--reqs", default="1,8,32")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--iters", type=int, default=20)
    a = p.parse_args(argv)

    from transformers import DynamicCache

    from dspark_sglang import ops
    from dspark_sglang.evaluation.drafters import load_drafter_for
    from dspark_sglang.sampling import SamplingBatch

    dtype = getattr(torch, a.dtype)
    drafter_cfg = json.loads((Path(a.drafter) / "config.json").read_text())
    gamma = drafter_cfg["block_size"]
    target = random_target(drafter_cfg, dtype, a.device)
    drafter = load_drafter_for(a.drafter, target, dtype=dtype)
    print(json.dumps(dict(device=torch.cuda.get_device_name() if a.device == "cuda" else "cpu", dtype=a.dtype,
                          torch=torch.__version__, gamma=gamma, context=a.context,
                          draft_vocab=None if drafter.draft_vocab_ids is None else drafter.draft_vocab_ids.numel())))
    gen = torch.Generator(device=a.device).manual_seed(0)
    ctx = a.context
    with torch.inference_mode():
        for num in (int(r) for r in a.reqs.split(",")):
            ids = torch.randint(0, drafter_cfg["vocab_size"], (num, ctx + gamma + 1), device=a.device, generator=gen)
            positions = torch.arange(ctx + gamma + 1, device=a.device).expand(num, -1)
            past = DynamicCache()
            _, hidden = target.forward(ids[:, :ctx], positions[:, :ctx], past)          # hidden [R, C, n·H]

            def step(width):
                target.forward(ids[:, ctx:ctx + width], positions[:, ctx:ctx + width], past)
                past.crop(-width)                                   # back to the C-token context

            decode_ms = median_us(lambda: step(1), a.device, a.iters) / 1e3
            verify_ms = median_us(lambda: step(gamma + 1), a.device, a.iters) / 1e3

            cache = drafter.new_cache(num)
            for r in range(num):
                drafter.append_context(cache, r, hidden[r], positions[r, :ctx])
            anchors, anchor_pos = ids[:, ctx], torch.full((num,), ctx, device=a.device)
            sampling = SamplingBatch.greedy(num).to(a.device)
            propose_ms = median_us(lambda: drafter.propose(cache, anchors, anchor_pos, sampling, need_probs=False),
                                   a.device, a.iters) / 1e3
            block = drafter.propose(cache, anchors, anchor_pos, sampling, need_probs=False)
            target_ids = ids[:, ctx:ctx + gamma + 1]                                     # [R, γ+1]
            lens = torch.full((num,), gamma, dtype=torch.int32, device=a.device)
            verify_op_ms = median_us(lambda: ops.verify_greedy(block.draft_ids, target_ids, lens), a.device,
                                     a.iters) / 1e3
            print(json.dumps(dict(R=num, decode_ms=round(decode_ms, 3), verify_forward_ms=round(verify_ms, 3),
                                  propose_ms=round(propose_ms, 3), verify_op_ms=round(verify_op_ms, 3),
                                  drafted_step_in_plain_steps=round((propose_ms + verify_ms + verify_op_ms)
                                                                    / decode_ms, 2))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
