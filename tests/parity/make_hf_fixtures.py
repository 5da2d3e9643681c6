#!/usr/bin/env python3
"""Builds tiny random Hugging Face MoE checkpoints and reference MoE-block outputs.

For every family the engines support (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2 greedy and
group-limited, DeepSeek-V3, OLMoE) and each dtype (fp32, bf16) this script
  1. builds a tiny model with transformers' own *ForCausalLM class from a fixed seed,
  2. saves it with save_pretrained(dir, safe_serialization=True) into <out>/<family>-<dtype>/,
  3. runs transformers' own MoE block of every MoE layer on random hidden states [1, n, hidden]
     and writes `io.safetensors` beside the checkpoint with, per MoE layer L:
       layer{L}.input          [n, hidden]  model dtype   block input
       layer{L}.output         [n, hidden]  model dtype   block output (routed + shared experts)
       layer{L}.topk_ids       [n, top_k]   I32           experts transformers chose (its order)
       layer{L}.topk_weights   [n, top_k]   F32           their final weights (as passed to experts)
       layer{L}.router_logits  [n, n_exp]   F32           fp32 logits x . W_router^T (for tie margins)
  4. reloads the saved checkpoint with from_pretrained and checks it reproduces the outputs.

The selection (topk_ids/topk_weights) is captured with a forward pre-hook on the block's
`experts` module, i.e. exactly what transformers feeds its experts.

Needs torch + transformers (5.x) + safetensors; runs on the CPU. `--dry-run` prints the plan
without importing torch. Usage:
  python3 tests/parity/make_hf_fixtures.py --out tests/fixtures/hf [--sources hf_sources.txt]
"""

import argparse
import json
import math
import os
import shutil
import sys
import traceback

HIDDEN = 64
VOCAB = 64
SEED = 1234

# Common small attention/embedding settings (the MoE blocks are what we test).
_COMMON = dict(
    hidden_size=HIDDEN,
    vocab_size=VOCAB,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)

# name -> (architecture class, config class, config kwargs, tokens per MoE layer)
# Routing features each fixture exercises are noted beside it.
FAMILIES = {
    # softmax, top-2 of 8, renormalised.
    "mixtral": (
        "MixtralForCausalLM",
        "MixtralConfig",
        dict(_COMMON, num_hidden_layers=2, intermediate_size=48, num_local_experts=8,
             num_experts_per_tok=2),
    ),
    # softmax, top-4 of 8 without renormalisation, shared expert with sigmoid gate,
    # decoder_sparse_step=2 -> layers 1 and 3 are MoE, 0 and 2 dense.
    "qwen2_moe": (
        "Qwen2MoeForCausalLM",
        "Qwen2MoeConfig",
        dict(_COMMON, num_hidden_layers=4, intermediate_size=40, moe_intermediate_size=32,
             shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=4,
             norm_topk_prob=False, decoder_sparse_step=2, mlp_only_layers=[]),
    ),
    # softmax, top-2 of 8 renormalised; mlp_only_layers=[1] -> layers 0 and 2 MoE, 1 dense.
    "qwen3_moe": (
        "Qwen3MoeForCausalLM",
        "Qwen3MoeConfig",
        dict(_COMMON, num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=32,
             num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
             mlp_only_layers=[1], head_dim=32),
    ),
    # softmax, greedy top-2 of 8, routed_scaling_factor 1.5, 2 shared experts, layer 0 dense.
    "deepseek_v2_greedy": (
        "DeepseekV2ForCausalLM",
        "DeepseekV2Config",
        dict(_COMMON, num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=32,
             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=2, n_group=1,
             topk_group=1, topk_method="greedy", routed_scaling_factor=1.5, norm_topk_prob=False,
             first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=8,
             qk_nope_head_dim=8, v_head_dim=8, head_dim=8),
    ),
    # softmax, group-limited greedy: 16 experts in 4 groups, keep 2 groups, top-3;
    # routed_scaling_factor 2.0, 1 shared expert, layer 0 dense.
    "deepseek_v2_group": (
        "DeepseekV2ForCausalLM",
        "DeepseekV2Config",
        dict(_COMMON, num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=32,
             n_routed_experts=16, num_experts_per_tok=3, n_shared_experts=1, n_group=4,
             topk_group=2, topk_method="group_limited_greedy", routed_scaling_factor=2.0,
             norm_topk_prob=False, first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=16,
             qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, head_dim=8),
    ),
    # sigmoid, noaux_tc: 16 experts in 4 groups, keep 2, top-4, e_score_correction_bias,
    # renormalised, routed_scaling_factor 2.5, 1 shared expert, layer 0 dense.
    "deepseek_v3": (
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        dict(_COMMON, num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=32,
             n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, n_group=4,
             topk_group=2, topk_method="noaux_tc", routed_scaling_factor=2.5, norm_topk_prob=True,
             first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
             qk_nope_head_dim=8, v_head_dim=8, head_dim=8),
    ),
    # deepseek_v3 with NEGATIVE correction biases U[-1, -0.3): many kept-group experts get negative
    # selection scores, so it matters how experts outside the kept groups are masked (transformers
    # 5.17 masks with -inf; 4.x masked with 0.0, which lets a masked expert beat them). fp32 only.
    "deepseek_v3_negbias": (
        "DeepseekV3ForCausalLM",
        "DeepseekV3Config",
        dict(_COMMON, num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=32,
             n_routed_experts=16, num_experts_per_tok=4, n_shared_experts=1, n_group=4,
             topk_group=2, topk_method="noaux_tc", routed_scaling_factor=2.5, norm_topk_prob=True,
             first_k_dense_replace=1, q_lora_rank=16, kv_lora_rank=16, qk_rope_head_dim=8,
             qk_nope_head_dim=8, v_head_dim=8, head_dim=8),
    ),
    # softmax, top-3 of 8 without renormalisation (OLMoE's default).
    "olmoe": (
        "OlmoeForCausalLM",
        "OlmoeConfig",
        dict(_COMMON, num_hidden_layers=2, intermediate_size=32, num_experts=8,
             num_experts_per_tok=3, norm_topk_prob=False),
    ),
}
DTYPES = ("fp32", "bf16")
# Per-family overrides: dtypes built and the e_score_correction_bias range [lo, hi).
FAMILY_DTYPES = {"deepseek_v3_negbias": ("fp32",)}
BIAS_RANGE = {"deepseek_v3_negbias": (-1.0, -0.3)}
DEFAULT_BIAS_RANGE = (0.0, 0.4)
# Extra fixtures saved with save_original_format=False (transformers' fused v5 layout), so the
# loader is tested on both layouts: (family, dtype).
FUSED_EXTRAS = (("mixtral", "bf16"), ("deepseek_v3", "fp32"))
# Extra fixtures saved in shards of at most this size, with model.safetensors.index.json.
SHARDED_EXTRAS = {("olmoe", "bf16"): "100KB"}
# Tokens fed to the first MoE layer and to the others (odd sizes on purpose).
N_TOKENS_FIRST = 13
N_TOKENS_OTHER = 29
KEEP_FILES = {"config.json", "model.safetensors", "model.safetensors.index.json", "io.safetensors"}


def log(*args):
    print(*args, flush=True)


def moe_block_of(layer):
    """Returns the layer's MoE block (a module with an `experts` child that is not a list)."""
    for name in ("block_sparse_moe", "mlp"):
        block = getattr(layer, name, None)
        if block is not None and hasattr(block, "experts"):
            return name, block
    return None, None


def reinit_(torch, model, gen):
    """Replaces transformers' N(0, 0.02) init by unit-scale weights so router logits are O(1)
    (bf16 near-ties stay rare) and expert outputs are O(1)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
            elif "bias" in name and "e_score_correction_bias" not in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            elif "e_score_correction_bias" not in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))


def set_correction_bias_(torch, model, gen, lo, hi):
    """Sets every e_score_correction_bias (parameter or buffer) to uniform [lo, hi). The default
    [0, 0.4) is big enough to change which experts win (sigmoid scores spread ~0.2) and positive,
    so selection scores are > 0 and the masking value of dropped groups cannot matter."""
    n = 0
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("e_score_correction_bias"):
                t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))
                n += 1
    return n


def force_eager_experts(model):
    for obj in [model.config] + [m.config for m in model.modules() if hasattr(m, "config")]:
        try:
            obj._experts_implementation = "eager"
        except Exception:  # noqa: BLE001 - best effort, logged below
            pass
    if hasattr(model, "set_experts_implementation"):
        try:
            model.set_experts_implementation("eager")
        except Exception as e:  # noqa: BLE001
            log(f"    set_experts_implementation('eager') failed: {e!r}")


def save_checkpoint(model, out_dir, original_format=True, max_shard_size=None):
    os.makedirs(out_dir, exist_ok=True)
    kwargs = dict(safe_serialization=True)
    if max_shard_size:
        kwargs["max_shard_size"] = max_shard_size
    if not original_format:
        kwargs["save_original_format"] = False
    try:
        model.save_pretrained(out_dir, **kwargs)
    except TypeError as e:
        log(f"    save_pretrained{tuple(kwargs)} raised {e!r}; retrying without safe_serialization")
        kwargs.pop("safe_serialization")
        model.save_pretrained(out_dir, **kwargs)
    for f in os.listdir(out_dir):
        if f not in KEEP_FILES and not f.startswith("model-"):
            path = os.path.join(out_dir, f)
            (shutil.rmtree if os.path.isdir(path) else os.remove)(path)


def run_blocks(torch, model, moe_layers, inputs):
    """Runs each MoE block on inputs[L] [n, hidden] (float32); returns the io tensors."""
    dtype = next(model.parameters()).dtype
    tensors = {}
    for li in moe_layers:
        attr, block = moe_block_of(model.model.layers[li])
        x = inputs[li].to(dtype)
        captured = {}

        def pre_hook(mod, args, kwargs, captured=captured):
            vals = list(args) + list(kwargs.values())
            captured["ids"], captured["w"] = vals[1], vals[2]

        handle = block.experts.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            with torch.no_grad():
                out = block(x.unsqueeze(0))
        finally:
            handle.remove()
        if isinstance(out, tuple):
            out = out[0]
        out = out.reshape(x.shape)
        gate_w = block.gate.weight.detach().float()
        logits = x.float() @ gate_w.t()
        tensors[f"layer{li}.input"] = x.contiguous()
        tensors[f"layer{li}.output"] = out.contiguous()
        ids = captured["ids"].reshape(x.shape[0], -1)
        w = captured["w"].reshape(x.shape[0], -1).float()
        if w.shape != ids.shape:  # some blocks pass dense [n, n_experts] weights
            w = w.gather(1, ids.long())
        tensors[f"layer{li}.topk_ids"] = ids.to(torch.int32).contiguous()
        tensors[f"layer{li}.topk_weights"] = w.contiguous()
        tensors[f"layer{li}.router_logits"] = logits.contiguous()
    return tensors


def describe_routing(torch, name, model, moe_layers, io):
    """Logs how often the family's special routing features changed the selection."""
    for li in moe_layers:
        _, block = moe_block_of(model.model.layers[li])
        ids = io[f"layer{li}.topk_ids"].long()
        logits = io[f"layer{li}.router_logits"]
        k = ids.shape[1]
        plain = torch.topk(logits, k, dim=-1).indices
        differs = sum(
            set(a.tolist()) != set(b.tolist()) for a, b in zip(ids, plain))
        w = io[f"layer{li}.topk_weights"]
        log(f"    layer {li}: n={ids.shape[0]} top_k={k} tokens whose selection differs from "
            f"plain top-k of logits: {differs}; weight sums min/max "
            f"{w.sum(-1).min().item():.4f}/{w.sum(-1).max().item():.4f}")
        bias = getattr(block.gate, "e_score_correction_bias", None)
        if bias is None:
            bias = getattr(block, "e_score_correction_bias", None)
        if bias is not None:
            log(f"    layer {li}: e_score_correction_bias dtype={bias.dtype} "
                f"range [{bias.min().item():.3f}, {bias.max().item():.3f}]")
            # How many tokens would pick other experts if dropped groups were masked with 0.0
            # (transformers 4.x) instead of -inf: the fixture pins that choice down when > 0.
            cfg = model.config
            n, e = logits.shape
            sfc = logits.sigmoid() + bias.float()
            groups = sfc.view(n, cfg.n_group, e // cfg.n_group).topk(2, dim=-1)[0].sum(-1)
            keep = torch.zeros_like(groups).scatter_(
                1, groups.topk(cfg.topk_group, dim=-1)[1], 1.0).bool()
            keep = keep.unsqueeze(-1).expand(n, cfg.n_group, e // cfg.n_group).reshape(n, e)
            by_inf = sfc.masked_fill(~keep, float("-inf")).topk(k, dim=-1)[1]
            by_zero = sfc.masked_fill(~keep, 0.0).topk(k, dim=-1)[1]
            masking = sum(set(a.tolist()) != set(b.tolist()) for a, b in zip(by_inf, by_zero))
            agree = sum(set(a.tolist()) == set(b.tolist()) for a, b in zip(by_inf, ids))
            log(f"    layer {li}: tokens where -inf vs 0.0 masking differ: {masking}; "
                f"-inf emulation agrees with transformers on {agree}/{n} tokens")


def tensor_layout(path):
    from safetensors import safe_open
    lines = []
    with safe_open(path, framework="pt") as f:
        for key in sorted(f.keys()):
            sl = f.get_slice(key)
            lines.append(f"{key} {sl.get_dtype()} {list(sl.get_shape())}")
    return lines


def dump_layout(out_dir, layout_file, label):
    files = sorted(f for f in os.listdir(out_dir) if f.endswith(".safetensors") and f != "io.safetensors")
    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
    layout_file.write(f"== {label} files: {json.dumps(sizes)}\n")
    for f in files:
        for line in tensor_layout(os.path.join(out_dir, f)):
            layout_file.write(f"{f}: {line}\n")
    layout_file.flush()


def build_family(torch, transformers, name, out_root, layout_file, sources_file):
    arch, config_cls_name, kwargs = FAMILIES[name]
    model_cls = getattr(transformers, arch)
    config_cls = getattr(transformers, config_cls_name)
    config = config_cls(**kwargs)
    ignored = {k: v for k, v in kwargs.items() if getattr(config, k, "<missing>") != v}
    if ignored:
        log(f"    WARNING config attributes not taken as given: "
            f"{ {k: (v, getattr(config, k, '<missing>')) for k, v in ignored.items()} }")
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = model_cls(config).eval()
    reinit_(torch, model, gen)
    n_bias = set_correction_bias_(torch, model, gen, *BIAS_RANGE.get(name, DEFAULT_BIAS_RANGE))
    force_eager_experts(model)

    moe_layers = [i for i, layer in enumerate(model.model.layers) if moe_block_of(layer)[1] is not None]
    attr = moe_block_of(model.model.layers[moe_layers[0]])[0]
    log(f"    MoE layers {moe_layers} (attribute '{attr}'); correction biases set: {n_bias}")
    if sources_file is not None:
        import inspect
        block = moe_block_of(model.model.layers[moe_layers[0]])[1]
        for mod in (block, block.gate, block.experts):
            try:
                sources_file.write(f"##### {name}: {type(mod).__module__}.{type(mod).__name__}\n")
                sources_file.write(inspect.getsource(type(mod)) + "\n")
            except Exception as e:  # noqa: BLE001
                sources_file.write(f"(no source: {e!r})\n")
        sources_file.flush()

    in_gen = torch.Generator().manual_seed(SEED + 1)
    inputs = {li: torch.randn((N_TOKENS_FIRST if j == 0 else N_TOKENS_OTHER, HIDDEN), generator=in_gen)
              for j, li in enumerate(moe_layers)}

    from safetensors.torch import save_file

    results = {}
    fp32_dir = os.path.join(out_root, f"{name}-fp32")
    for dtype_name in FAMILY_DTYPES.get(name, DTYPES):
        label = f"{name}-{dtype_name}"
        out_dir = os.path.join(out_root, label)
        try:
            if dtype_name == "fp32":
                m = model
                save_checkpoint(m, out_dir)
            else:
                # Load the fp32 checkpoint as bf16 the way users do (honours keep-in-fp32 rules).
                m = model_cls.from_pretrained(fp32_dir, dtype=torch.bfloat16).eval()
                force_eager_experts(m)
                save_checkpoint(m, out_dir)
            io = run_blocks(torch, m, moe_layers, inputs)
            describe_routing(torch, label, m, moe_layers, io)
            meta = {"family": name, "dtype": dtype_name, "moe_layers": json.dumps(moe_layers),
                    "transformers": transformers.__version__, "torch": torch.__version__}
            save_file(io, os.path.join(out_dir, "io.safetensors"), metadata=meta)
            dump_layout(out_dir, layout_file, label)
            # The checkpoint on disk must reproduce the outputs.
            reloaded = model_cls.from_pretrained(out_dir, dtype=m.dtype).eval()
            force_eager_experts(reloaded)
            io2 = run_blocks(torch, reloaded, moe_layers, inputs)
            worst = max((io2[k].float() - io[k].float()).abs().max().item()
                        for k in io if k.endswith(".output"))
            log(f"    {label}: saved; reload max |diff| of outputs = {worst:.3g}")
            results[label] = "ok" if worst == 0.0 else f"reload-diff {worst:.3g}"
            extras = []
            if (name, dtype_name) in FUSED_EXTRAS:
                extras.append(("fused", dict(original_format=False)))
            if (name, dtype_name) in SHARDED_EXTRAS:
                extras.append(("sharded", dict(max_shard_size=SHARDED_EXTRAS[(name, dtype_name)])))
            for suffix, save_kwargs in extras:
                extra_label = f"{label}-{suffix}"
                extra_dir = os.path.join(out_root, extra_label)
                save_checkpoint(m, extra_dir, **save_kwargs)
                save_file(io, os.path.join(extra_dir, "io.safetensors"), metadata=meta)
                dump_layout(extra_dir, layout_file, extra_label)
                reloaded = model_cls.from_pretrained(extra_dir, dtype=m.dtype).eval()
                force_eager_experts(reloaded)
                io3 = run_blocks(torch, reloaded, moe_layers, inputs)
                worst = max((io3[k].float() - io[k].float()).abs().max().item()
                            for k in io if k.endswith(".output"))
                log(f"    {extra_label}: saved ({sorted(os.listdir(extra_dir))}); reload max |diff| "
                    f"of outputs = {worst:.3g}")
                results[extra_label] = "ok" if worst == 0.0 else f"reload-diff {worst:.3g}"
        except Exception:  # noqa: BLE001 - one fixture's failure must not lose the others
            log(f"    FAILED {label}:\n{traceback.format_exc()}")
            results[label] = "FAILED"
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="fixtures root, e.g. tests/fixtures/hf")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset")
    ap.add_argument("--sources", help="also write the MoE classes' transformers source here")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, import nothing")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}; known: {list(FAMILIES)}")
    if args.dry_run:
        for f in families:
            arch, cfg, kw = FAMILIES[f]
            log(f"{f}: {arch}({cfg}) {json.dumps(kw, sort_keys=True)}")
            for d in FAMILY_DTYPES.get(f, DTYPES):
                log(f"  -> {os.path.join(args.out, f + '-' + d)}")
        return 0

    import platform

    import safetensors
    import torch
    import transformers

    log(f"python {platform.python_version()} torch {torch.__version__} transformers "
        f"{transformers.__version__} safetensors {safetensors.__version__}")
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    results = {}
    sources = open(args.sources, "w") if args.sources else None
    with open(os.path.join(args.out, "layout.txt"), "w") as layout:
        for f in families:
            log(f"== {f}")
            try:
                results.update(build_family(torch, transformers, f, args.out, layout, sources))
            except Exception:  # noqa: BLE001
                log(f"    FAILED {f}:\n{traceback.format_exc()}")
                results[f] = "FAILED"
    if sources:
        sources.close()
    log("== summary")
    for k, v in results.items():
        log(f"  {k}: {v}")
    return 0 if all(v == "ok" for v in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
