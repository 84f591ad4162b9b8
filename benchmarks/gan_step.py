"""Speed of one GAN training iteration: eager vs. replayed as a CUDA graph, and where the time goes.

A fixed synthetic workload (random 3 x 28 x 28 uint8 images of 10 classes, the default GAN params)
goes through :func:`pipeline.counterfactuals.gan_training.train` for ``--iterations`` iterations, once eagerly and, on
CUDA, once with the step captured as a CUDA graph. Prints iterations/second for each and the ratio,
then a torch-profiler table of one eager iteration (the most expensive operators, and how many
operators one iteration launches). Not a test: nothing is asserted.

    python -m benchmarks.gan_step                    # CPU or the GPU when present
    python -m benchmarks.gan_step --iterations 300 --batch-size 512
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from pipeline.counterfactuals.gan_training import (ClassSampler, GanStreams, GanTrainingOptions, StepInputs, draw_indices,
                                                   make_optimizers, net_config, train, training_step)
from pipeline.models.gan import GanNets
from pipeline.runtime import device_name, select_device, stage_seed, torch_generator


def workload(n_images: int, n_classes: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n_images) % n_classes
    return images.to(device), labels.to(device)


def seeded_streams(device: torch.device) -> GanStreams:
    """The training's random streams, seeded as a stage would seed them (data on the CPU, latent codes on ``device``)."""
    return GanStreams.create(lambda name, on: torch_generator(stage_seed(0, f"gan_step/{name}", "benchmark"), on), device)


def iterations_per_second(cfg: GanTrainingOptions, images, labels, n_classes: int) -> float:
    device = images.device
    torch.manual_seed(0)
    nets = GanNets(net_config(cfg, n_classes, tuple(images.shape[1:]))).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(nets, images, labels, cfg, seeded_streams(device), Path(tmp) / "last.pt", stamp="benchmark")
    return result["iterations_run"] / result["seconds"]


def profile_one_step(cfg: GanTrainingOptions, images, labels, n_classes: int, rows: int) -> None:
    """Profile one eager iteration as training runs it: the CPU draws, their copy to the device, the step."""
    device = images.device
    nets = GanNets(net_config(cfg, n_classes, tuple(images.shape[1:]))).to(device)
    optimizers = make_optimizers(nets, cfg)
    sampler = ClassSampler(labels.cpu(), n_classes)
    streams = seeded_streams(device)
    inputs = StepInputs(cfg.batch_size, device)

    def iteration() -> None:
        inputs.load(draw_indices(streams, sampler, len(images), n_classes, cfg.batch_size))
        training_step(nets, optimizers, images, labels, inputs, cfg, streams.latent)

    for _ in range(3):
        iteration()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        iteration()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    n_ops = sum(e.count for e in events if e.key.startswith("aten::"))
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(events.table(sort_by=sort_by, row_limit=rows))
    if device.type == "cuda":
        kernels = sum(e.count for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        print(f"one eager iteration: {n_ops} aten operator calls, {kernels} GPU kernels, "
              f"{gpu_us / 1e3:.1f} ms of GPU kernel time")
    else:
        print(f"one eager iteration: {n_ops} aten operator calls")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=GanTrainingOptions.batch_size)
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--profile-rows", type=int, default=15, help="rows of the profiler table (0 = no profile)")
    args = parser.parse_args()

    device = select_device(args.device)
    images, labels = workload(args.images, args.classes, device)
    cfg = dataclasses.replace(GanTrainingOptions(), iterations=args.iterations, batch_size=args.batch_size,
                              checkpoint_every=args.iterations, log_every=args.iterations)
    print(f"GAN training step, batch {cfg.batch_size}, {args.iterations} iterations on {device_name(device)}")
    eager = iterations_per_second(dataclasses.replace(cfg, cuda_graph=False), images, labels, args.classes)
    print(f"eager:      {eager:8.1f} it/s   {eager * cfg.batch_size:10.0f} images/s")
    if device.type == "cuda":
        start = time.perf_counter()
        graphed = iterations_per_second(dataclasses.replace(cfg, cuda_graph=True), images, labels, args.classes)
        print(f"CUDA graph: {graphed:8.1f} it/s   {graphed * cfg.batch_size:10.0f} images/s   "
              f"({graphed / eager:.1f}x; run incl. capture {time.perf_counter() - start:.1f} s)")
    if args.profile_rows:
        profile_one_step(cfg, images, labels, args.classes, args.profile_rows)


if __name__ == "__main__":
    main()
