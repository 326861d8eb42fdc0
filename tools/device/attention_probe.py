"""Self-attention kernels at the DiT's shapes on one GPU: speed and agreement with cuDNN's and an fp32 reference.

The GPU-performance issue asks for a faster exact attention kernel than cuDNN's (FA3-class) on Hopper, and an FP8
one. This times each available kernel on the sequences the DiT attends over (81 frames: 75,600 tokens at 960×960,
33,600 at 640×640; 40 heads of 128 on one GPU, 10 per rank on four), bf16, inputs in the token-major layout the
projections produce, and compares outputs (`fa3_fp8` includes its quantization of the inputs). Prints and writes
JSON.

    python tools/device/attention_probe.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from engine.models.attention import attention, attention_backends


def timed_ms(fn, repeats: int) -> float:
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / repeats


def fp32_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rows: int) -> torch.Tensor:
    """Exact attention in fp32 for the first `rows` queries of every head: [B, H, rows, d]."""
    scores = torch.einsum("bhqd,bhkd->bhqk", q[:, :, :rows].float(), k.float()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bhkd->bhqd", scores.softmax(-1), v.float())


def probe(tokens: int, heads: int, backends: list[str], repeats: int) -> list[dict]:
    generator = torch.Generator("cuda").manual_seed(0)
    q, k, v = (torch.randn(1, tokens, heads, 128, device="cuda", dtype=torch.bfloat16, generator=generator)
               .transpose(1, 2) for _ in range(3))  # fmt: skip
    exact = fp32_rows(q, k, v, rows=256)
    results, outputs = [], {}
    for backend in backends:
        row = {"tokens": tokens, "heads": heads, "backend": backend}
        if backend not in attention_backends():
            results.append({**row, "error": "not registered"})
            continue
        started = time.perf_counter()
        try:
            outputs[backend] = out = attention(q, k, v, backend=backend)
            torch.cuda.synchronize()
        except Exception as error:  # a kernel that cannot run here is a result too
            results.append({**row, "error": repr(error)[:600]})
            continue
        first_s = time.perf_counter() - started
        ms = timed_ms(lambda backend=backend: attention(q, k, v, backend=backend), repeats)
        results.append({
            **row, "first_call_s": round(first_s, 2), "ms": round(ms, 2),
            "tflops": round(4 * tokens * tokens * heads * 128 / ms / 1e9, 1),
            "max_error_vs_fp32": float((out[:, :, :256].float() - exact).abs().max()),
            "relative_error_vs_fp32": float((out[:, :, :256].float() - exact).norm() / exact.norm()),
            "max_error_vs_cudnn": float((out - outputs["cudnn"]).abs().max()) if "cudnn" in outputs else None,
        })  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["cudnn", "fa4", "fa3", "fa3_fp8"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for tokens, heads in ((75_600, 40), (75_600, 10), (33_600, 40)):
        results += probe(tokens, heads, args.backends, args.repeats)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}, handle,
                      indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
