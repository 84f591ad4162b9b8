"""Throughput of the explain stage's mask sweep: vectorised vs. QuAC's evaluator vs. a per-threshold loop.

A fixed synthetic workload (random images and counterfactuals, attribution-like maps; the pipeline's
CNN with random weights, 10 classes) goes, on the same classifier and device, through

- :func:`pipeline.attribution.discriminative.sweep`: each distinct mask of a pair built and classified once, a
  chunk of pairs per forward pass;
- :func:`quac_style_sweep`: the algorithm of QuAC's evaluator (``quac.evaluation.BaseEvaluator``):
  per pair, the real image classified alone, one mask per threshold built in a Python loop
  (threshold, closing, blur; QuAC does this with OpenCV, here our torch closing and blur on single
  masks), and all thresholds' hybrids of the pair in one forward pass;
- :func:`pipeline.attribution.discriminative.sweep_loop`: one image per forward pass.

Prints pairs per second for each, the speed-ups of the vectorised sweep and the largest difference
of score changes between them on the pairs they share.

Maps: ``smooth`` (default) is Gaussian-blurred uniform noise, normalised like attribution maps
(|map| over its peak), so that many thresholds give the same mask, as with real maps; ``uniform`` is
unblurred noise, where nearly every threshold gives its own mask.

    python -m benchmarks.explain_sweep                     # CPU or the GPU when present
    python -m benchmarks.explain_sweep --pairs 4096 --quac-pairs 64 --loop-pairs 16 --mixed-precision
    python -m benchmarks.explain_sweep --convention quac   # QuAC's thresholds and mask sizes
    python -m benchmarks.explain_sweep --maps uniform      # every threshold a distinct mask
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from pipeline.attribution.blur import gaussian_blur
from pipeline.attribution.discriminative import (CONVENTIONS, MaskSettings, SweepResult, closed_and_blurred, distinct_masks,
                                     mask_sizes, normalise_maps, sweep, sweep_loop)
from pipeline.models.classifiers import CNNClassifier, frozen
from pipeline.runtime import device_name, select_device

MAPS = ("smooth", "uniform")


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    synchronise(device)
    start = time.perf_counter()
    result = fn()
    synchronise(device)
    return result, time.perf_counter() - start


def synthetic_maps(n: int, kind: str, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """[n,1,28,28] maps in [0, 1]: uniform noise, blurred with ``sigma`` when ``smooth``."""
    noise = torch.rand(n, 1, 28, 28, generator=generator)
    return normalise_maps(gaussian_blur(noise, sigma) if kind == "smooth" else noise, across_channels=True)


@torch.no_grad()
def quac_style_sweep(model: nn.Module, real: torch.Tensor, counterfactual: torch.Tensor, maps: torch.Tensor,
                     target: torch.Tensor, settings: MaskSettings) -> SweepResult:
    """QuAC's evaluator per pair: the real image, then every threshold's mask in a Python loop and the
    pair's hybrids (one per threshold) classified in one forward pass."""
    n, t = len(real), settings.n_thresholds
    thresholds = settings.thresholds(real.device).tolist()
    sizes, changes, predicted, base = [], [], [], []
    for i in range(n):
        x, cf, m, tgt = real[i : i + 1].float(), counterfactual[i : i + 1].float(), maps[i : i + 1].float(), int(target[i])
        p_real = model(x).softmax(dim=1)[0, tgt]
        masks, size = [], []
        for threshold in thresholds:
            closed, soft = closed_and_blurred((m > threshold).float(), settings)
            masks.append(soft)
            size.append(mask_sizes(closed, soft, settings.convention))
        probs = model(torch.lerp(x, cf, torch.cat(masks))).softmax(dim=1)  # [T, classes]
        sizes.append(torch.cat(size))
        changes.append(probs[:, tgt] - p_real)
        predicted.append(probs.argmax(dim=1))
        base.append(p_real)
    if not sizes:
        empty = torch.empty(0, t, device=real.device)
        return SweepResult(empty, empty.clone(), empty.long(), torch.empty(0, device=real.device))
    return SweepResult(torch.stack(sizes), torch.stack(changes), torch.stack(predicted), torch.stack(base))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=64, help="pairs for the vectorised sweep")
    parser.add_argument("--quac-pairs", type=int, default=64, help="pairs for the QuAC-style reference")
    parser.add_argument("--loop-pairs", type=int, default=4, help="pairs for the per-threshold loop (it is slow)")
    parser.add_argument("--thresholds", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16384, help="most images per forward pass (vectorised)")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--maps", default="smooth", choices=MAPS, help="blurred noise (like attributions) or plain noise")
    parser.add_argument("--map-sigma", type=float, default=2.0, help="blur of the smooth maps, in pixels")
    parser.add_argument("--mixed-precision", action="store_true", help="bf16 autocast in the vectorised sweep (CUDA)")
    parser.add_argument("--convention", default="pipeline", choices=CONVENTIONS, help="score convention of the sweep")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    device = select_device(args.device)
    torch.manual_seed(0)
    model = frozen(CNNClassifier(n_classes=10, width=args.width), device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    n = max(args.pairs, args.quac_pairs, args.loop_pairs)
    real = torch.rand(n, 3, 28, 28, generator=gen).to(device)
    counterfactual = torch.rand(n, 3, 28, 28, generator=gen).to(device)
    maps = synthetic_maps(n, args.maps, args.map_sigma, gen).to(device)
    target = torch.randint(0, 10, (n,), generator=gen).to(device)
    settings = MaskSettings(n_thresholds=args.thresholds, closing_size=3, blur_sigma=1.0, convention=args.convention)

    # warm-up (kernel selection, allocator)
    sweep(model, real[:2], counterfactual[:2], maps[:2], target[:2], settings, args.batch_size, args.mixed_precision)
    quac_style_sweep(model, real[:1], counterfactual[:1], maps[:1], target[:1], settings)
    sweep_loop(model, real[:1], counterfactual[:1], maps[:1], target[:1], MaskSettings(4, 3, 1.0, args.convention))

    runs = {
        "vectorised sweep": (args.pairs, lambda p: sweep(model, real[p], counterfactual[p], maps[p], target[p], settings,
                                                         args.batch_size, args.mixed_precision)),
        "QuAC-style      ": (args.quac_pairs, lambda p: quac_style_sweep(model, real[p], counterfactual[p], maps[p],
                                                                         target[p], settings)),
        "per-pair loop   ": (args.loop_pairs, lambda p: sweep_loop(model, real[p], counterfactual[p], maps[p], target[p],
                                                                   settings)),
    }
    distinct = distinct_masks(maps[: args.pairs], settings.thresholds(device)).sum(dim=1).float()
    print(f"device: {device_name(device)}; {args.thresholds} thresholds; CNN width {args.width}; "
          f"bf16 autocast: {args.mixed_precision and device.type == 'cuda'}; {args.convention} convention; "
          f"{args.maps} maps: {distinct.mean().item():.1f} distinct masks per pair (mean)")
    results, rates = {}, {}
    for name, (pairs, run) in runs.items():
        results[name], seconds = timed(lambda: run(slice(0, pairs)), device)
        rates[name] = pairs / seconds
        print(f"{name} : {pairs:6d} pairs in {seconds:8.3f} s = {rates[name]:10.2f} pairs/s "
              f"({rates[name] * args.thresholds:.0f} thresholds/s)")
    fast = results["vectorised sweep"]
    for name in list(runs)[1:]:
        shared = min(args.pairs, runs[name][0])  # pairs both runs swept
        deviation = (fast.score_change[:shared] - results[name].score_change[:shared]).abs().max().item()
        print(f"vectorised / {name.strip():13s}: {rates['vectorised sweep'] / rates[name]:7.1f}x   "
              f"(max |score change difference| over {shared} pairs {deviation:.2e})")


if __name__ == "__main__":
    main()
