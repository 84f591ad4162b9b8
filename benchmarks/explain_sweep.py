"""Throughput of the explain stage's mask sweep: vectorised vs. a per-pair, per-threshold loop.

A fixed synthetic workload (random images, counterfactuals and maps; the pipeline's CNN with random
weights, 10 classes) goes through :func:`pipeline.discriminative.sweep` (all thresholds of a chunk
of pairs in one forward pass) and through :func:`pipeline.discriminative.sweep_loop` (one image per
forward pass), on the same classifier and device. Prints pairs per second for both and the ratio.

    python -m benchmarks.explain_sweep                     # CPU or the GPU when present
    python -m benchmarks.explain_sweep --pairs 4096 --loop-pairs 16 --mixed-precision
    python -m benchmarks.explain_sweep --convention quac   # QuAC's thresholds and mask sizes
"""
from __future__ import annotations

import argparse
import time

import torch

from pipeline.discriminative import CONVENTIONS, MaskSettings, normalise_maps, sweep, sweep_loop
from pipeline.models import CNNClassifier, frozen
from pipeline.runtime import device_name, select_device


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    synchronise(device)
    start = time.perf_counter()
    result = fn()
    synchronise(device)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="pairs for the vectorised sweep")
    parser.add_argument("--loop-pairs", type=int, default=4, help="pairs for the per-pair loop (it is slow)")
    parser.add_argument("--thresholds", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16384, help="images per forward pass (vectorised)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--mixed-precision", action="store_true", help="bf16 autocast in the vectorised sweep (CUDA)")
    parser.add_argument("--convention", default="pipeline", choices=CONVENTIONS, help="score convention of the sweep")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    device = select_device(args.device)
    torch.manual_seed(0)
    model = frozen(CNNClassifier(n_classes=10, width=args.width), device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    n = max(args.pairs, args.loop_pairs)
    real = torch.rand(n, 3, 28, 28, generator=gen).to(device)
    counterfactual = torch.rand(n, 3, 28, 28, generator=gen).to(device)
    maps = normalise_maps(torch.rand(n, 1, 28, 28, generator=gen), across_channels=True).to(device)
    target = torch.randint(0, 10, (n,), generator=gen).to(device)
    settings = MaskSettings(n_thresholds=args.thresholds, closing_size=3, blur_sigma=1.0, convention=args.convention)

    # warm-up (kernel selection, allocator)
    sweep(model, real[:2], counterfactual[:2], maps[:2], target[:2], settings, args.batch_size, args.mixed_precision)
    sweep_loop(model, real[:1], counterfactual[:1], maps[:1], target[:1], MaskSettings(4, 3, 1.0, args.convention))

    part = slice(0, args.pairs)
    fast, fast_s = timed(lambda: sweep(model, real[part], counterfactual[part], maps[part], target[part], settings,
                                       args.batch_size, args.mixed_precision), device)
    loop_part = slice(0, args.loop_pairs)
    slow, slow_s = timed(lambda: sweep_loop(model, real[loop_part], counterfactual[loop_part], maps[loop_part],
                                            target[loop_part], settings), device)
    compared = min(args.pairs, args.loop_pairs)  # pairs both runs swept
    deviation = (fast.score_change[:compared] - slow.score_change[:compared]).abs().max().item()
    fast_rate, slow_rate = args.pairs / fast_s, args.loop_pairs / slow_s
    print(f"device: {device_name(device)}; {args.thresholds} thresholds; CNN width {args.width}; "
          f"bf16 autocast: {args.mixed_precision and device.type == 'cuda'}; {args.convention} convention")
    print(f"vectorised sweep : {args.pairs:6d} pairs in {fast_s:8.3f} s = {fast_rate:10.2f} pairs/s "
          f"({fast_rate * (args.thresholds + 1):.0f} images/s)")
    print(f"per-pair loop    : {args.loop_pairs:6d} pairs in {slow_s:8.3f} s = {slow_rate:10.2f} pairs/s "
          f"({slow_rate * (args.thresholds + 1):.0f} images/s)")
    print(f"speed-up         : {fast_rate / slow_rate:.1f}x   (max |score change difference| {deviation:.2e})")


if __name__ == "__main__":
    main()
