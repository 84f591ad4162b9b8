"""Speed of one GAN training iteration, where its time goes, and (on CUDA) eager vs. a replayed CUDA graph.

A fixed synthetic workload (random 3 x 28 x 28 uint8 images of 10 classes) goes through
:func:`pipeline.counterfactuals.gan_training.train` for ``--iterations`` iterations with the default GAN options
(``--set key=value`` changes one, e.g. ``--set generator=stargan``), once eagerly and, on CUDA, once with the
step captured as a CUDA graph. Prints iterations/second for each and the ratio, then the phases of an iteration
as the training loop labels them (discriminator forward, R1, backward, optimiser; generator forward, backward,
optimiser; EMA; logging) in milliseconds per iteration and as a share of the profiled wall time, and the most
expensive operators. Not a test: nothing is asserted.

    python -m benchmarks.gan_step                    # CPU or the GPU when present
    python -m benchmarks.gan_step --device cpu --threads 2 --batch-size 64 --set generator=stargan
    python -m benchmarks.gan_step --iterations 300 --batch-size 512
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
import typing
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.counterfactuals.gan_training import GanStreams, GanTrainingOptions, net_config, train
from pipeline.models.gan import GanNets
from pipeline.runtime import device_name, select_device, stage_seed, torch_generator

# The labels training puts on the phases of an iteration (record_function names), in the order they run.
PHASES = ("d_forward", "d_r1", "d_backward", "d_optimizer", "g_forward", "g_backward", "g_optimizer", "ema", "logging")


def workload(n_images: int, n_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n_images) % n_classes
    return images.to(device), labels.to(device)


def seeded_streams(device: torch.device) -> GanStreams:
    """The training's random streams, seeded as a stage would seed them (data on the CPU, latent codes on ``device``)."""
    return GanStreams.create(lambda name, on: torch_generator(stage_seed(0, f"gan_step/{name}", "benchmark"), on), device)


def run_training(cfg: GanTrainingOptions, images, labels, n_classes: int) -> dict:
    """:func:`train` from fresh networks on the workload (its checkpoint in a temporary folder)."""
    device = images.device
    torch.manual_seed(0)
    nets = GanNets(net_config(cfg, n_classes, tuple(images.shape[1:]))).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        return train(nets, images, labels, cfg, seeded_streams(device), Path(tmp) / "last.pt", stamp="benchmark")


def iterations_per_second(cfg: GanTrainingOptions, images, labels, n_classes: int) -> float:
    result = run_training(cfg, images, labels, n_classes)
    return result["iterations_run"] / result["seconds"]


def phase_times(events, phases: tuple[str, ...] = PHASES) -> dict[str, float]:
    """Total CPU time (microseconds) of each labelled phase in the profiler's ``key_averages()``."""
    totals = {e.key: e.cpu_time_total for e in events}
    return {phase: float(totals.get(phase, 0.0)) for phase in phases}


def profile_training(cfg: GanTrainingOptions, images, labels, n_classes: int, iterations: int, rows: int) -> None:
    """Profile ``iterations`` training iterations (after a short warm-up run) as :func:`train` runs them, logging
    every ``cfg.log_every``; print the time per phase and the most expensive operators."""
    device = images.device
    run_training(dataclasses.replace(cfg, iterations=3, log_every=3, checkpoint_every=3), images, labels, n_classes)
    cfg = dataclasses.replace(cfg, iterations=iterations, checkpoint_every=10**9)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        run_training(cfg, images, labels, n_classes)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - started) * 1e6
    events = prof.key_averages()
    times = phase_times(events)
    times["other (data draws, setup, checkpoint)"] = max(0.0, wall_us - sum(times.values()))
    print(f"\nwhere an iteration's time goes ({iterations} iterations profiled, {wall_us / iterations / 1e3:.1f} ms each "
          f"under the profiler):")
    for phase, us in times.items():
        print(f"  {phase:40s} {us / iterations / 1e3:8.2f} ms  {100 * us / wall_us:5.1f} %")
    n_ops = sum(e.count for e in events if e.key.startswith("aten::")) / iterations
    print(f"  aten operator calls per iteration: {n_ops:.0f}\n")
    if rows:
        sort_by = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(events.table(sort_by=sort_by, row_limit=rows))


def with_setting(cfg: GanTrainingOptions, assignment: str) -> GanTrainingOptions:
    """``cfg`` with one ``name=value`` set, the value read as the field's type."""
    name, _, raw = assignment.partition("=")
    types = typing.get_type_hints(GanTrainingOptions)
    if name not in types:
        raise SystemExit(f"--set {assignment}: no GAN option {name!r}; options: {', '.join(types)}")
    kind = types[name]
    if kind is bool:
        value = raw.lower() in ("1", "true", "yes")
    elif kind in (int, float):
        value = kind(raw)
    else:
        value = raw
    return dataclasses.replace(cfg, **{name: value})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=GanTrainingOptions.batch_size)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a GAN option (repeatable)")
    parser.add_argument("--profile-iterations", type=int, default=10, help="iterations profiled (0 = no profile)")
    parser.add_argument("--profile-rows", type=int, default=15, help="rows of the operator table (0 = none)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    images, labels = workload(args.images, args.classes, device)
    cfg = dataclasses.replace(GanTrainingOptions(), iterations=args.iterations, batch_size=args.batch_size,
                              checkpoint_every=args.iterations, log_every=args.iterations)
    for assignment in args.set:
        cfg = with_setting(cfg, assignment)
    print(f"GAN training step, generator {cfg.generator}, width {cfg.width}, batch {cfg.batch_size}, "
          f"{args.iterations} iterations on {device_name(device)} ({torch.get_num_threads()} CPU threads)")
    eager = iterations_per_second(dataclasses.replace(cfg, cuda_graph=False), images, labels, args.classes)
    print(f"eager:      {eager:8.2f} it/s   {eager * cfg.batch_size:10.0f} images/s   {1e3 / eager:8.1f} ms/it")
    if device.type == "cuda" and cfg.r1_every == 1:
        start = time.perf_counter()
        graphed = iterations_per_second(dataclasses.replace(cfg, cuda_graph=True), images, labels, args.classes)
        print(f"CUDA graph: {graphed:8.1f} it/s   {graphed * cfg.batch_size:10.0f} images/s   "
              f"({graphed / eager:.1f}x; run incl. capture {time.perf_counter() - start:.1f} s)")
    if args.profile_iterations:
        profile_training(dataclasses.replace(cfg, log_every=min(cfg.log_every, 5)), images, labels, args.classes,
                         args.profile_iterations, args.profile_rows)


if __name__ == "__main__":
    main()
