#!/usr/bin/env python3
"""Send one MoE layer's hidden states to a MoE Swarm daemon with the stock Triton client.

    bash scripts/serve.sh                       # terminal 1: the daemon on the embedded model
    .venv/bin/python examples/tritonclient_example.py --url 127.0.0.1:50051 --layer 0 --tokens 4

Each MoE layer is one KServe model named "<model>.layer<L>". Inputs: "input" [n_tokens, hidden]
(BF16, FP16 or FP32). Outputs: "output" (same dtype and shape), "expert_ids" INT32 [n_tokens, top_k]
and "expert_weights" FP32 [n_tokens, top_k]. See docs/API.md.
"""
import argparse
import time

import numpy as np
import tritonclient.grpc as tc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="127.0.0.1:50051")
    parser.add_argument("--layer", type=int, default=0)
    parser.add_argument("--tokens", type=int, default=4)
    parser.add_argument("--datatype", default="BF16", choices=["BF16", "FP16", "FP32"])
    args = parser.parse_args()

    client = tc.InferenceServerClient(args.url)
    if not client.is_server_ready():
        raise SystemExit(f"{args.url} is not ready (still loading, or draining)")

    # Every served MoE layer is a model in the repository index.
    models = [m.name for m in client.get_model_repository_index().models]
    name = next((m for m in models if m.endswith(f".layer{args.layer}")), None)
    if name is None:
        raise SystemExit(f"no MoE layer {args.layer}; served models: {models}")
    config = client.get_model_config(name, as_json=True)["config"]
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    hidden = int(config["input"][0]["dims"][0])
    print(f"{name}: {params['family']}, hidden {hidden}, {params['num_experts']} experts, "
          f"top-{params['top_k']}")

    x = np.random.default_rng(0).standard_normal((args.tokens, hidden)).astype(
        np.float16 if args.datatype == "FP16" else np.float32)
    inp = tc.InferInput("input", list(x.shape), args.datatype)
    inp.set_data_from_numpy(x)  # BF16: float32 values, sent as bfloat16
    outputs = [tc.InferRequestedOutput(n) for n in ("output", "expert_ids", "expert_weights")]

    start = time.perf_counter()
    result = client.infer(name, [inp], outputs=outputs, request_id="example-1",
                          timeout=1_000_000)  # server-side timeout, microseconds
    elapsed_ms = (time.perf_counter() - start) * 1e3

    y = result.as_numpy("output")
    ids = result.as_numpy("expert_ids")
    weights = result.as_numpy("expert_weights")
    print(f"output {y.shape} {y.dtype} in {elapsed_ms:.2f} ms, rms {np.sqrt(np.mean(y ** 2)):.4f}")
    for t in range(args.tokens):
        routes = ", ".join(f"expert {e} ({w:.3f})" for e, w in zip(ids[t], weights[t]))
        print(f"  token {t}: {routes}")

    stats = client.get_inference_statistics(name).model_stats[0]
    print(f"{name} so far: {stats.inference_count} tokens in {stats.execution_count} requests")
    client.close()


if __name__ == "__main__":
    main()
