"""What every stage needs at run time: the dataset argument, the device, seeding, timing."""
from __future__ import annotations

import argparse
import contextlib
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from pipeline import paths
from pipeline.config import DATASETS, ConfigError, Params, load_params
from pipeline.storage import InputError, write_json


def select_device(setting: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is an error, not a silent CPU run."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError("params: device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, numpy and torch; optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def stage_seed(seed: int, stage: str, dataset: str) -> int:
    """A seed per (stage, dataset) derived from the global one, stable across runs and machines."""
    import zlib

    return (seed * 1_000_003 + zlib.crc32(f"{stage}/{dataset}".encode())) % (2**31 - 1)


@dataclass
class StageTimer:
    """Wall time of a stage and how many images it processed, written to ``metrics/<D>/timing``."""

    stage: str
    dataset: str
    device: torch.device
    images: int = 0
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - self.started

    def write(self) -> dict:
        seconds = self.seconds()
        record = {
            "stage": f"{self.stage}@{self.dataset}",
            "device": device_name(self.device),
            "seconds": seconds,
            "images": int(self.images),
            "images_per_second": self.images / seconds if seconds > 0 else 0.0,
        }
        write_json(paths.timing_path(self.dataset, self.stage), record)
        return record


@dataclass
class StageContext:
    dataset: str
    params: Params
    device: torch.device
    timer: StageTimer

    def generator(self, salt: str = "", device: torch.device | str | None = None) -> torch.Generator:
        return torch_generator(stage_seed(self.params.seed, self.timer.stage + salt, self.dataset), device or self.device)

    def rng(self, salt: str = "") -> np.random.Generator:
        return np.random.default_rng(stage_seed(self.params.seed, self.timer.stage + salt, self.dataset))


def open_live(directory):
    """A DVCLive logger writing under ``directory``; the stage's outputs are declared in dvc.yaml instead."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        return Live(dir=str(directory), save_dvc_exp=False, dvcyaml=False)
    except SCMError as err:
        raise InputError(f"DVCLive cannot read the git repository ({err}); commit once (`git commit`) and re-run") from err


@contextlib.contextmanager
def stage(name: str, argv: list[str] | None = None) -> Iterator[StageContext]:
    """Parse ``<dataset>``, validate params, pick the device, seed, and time the stage.

    Configuration and input errors end the process with a one-line message instead of a trace.
    """
    parser = argparse.ArgumentParser(prog=f"python -m pipeline.{name}")
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        device = select_device(params.device)
        seed_everything(params.seed, params.deterministic)
        ctx = StageContext(args.dataset, params, device, StageTimer(name, args.dataset, device))
        yield ctx
        record = ctx.timer.write()
        print(f"[{record['stage']}] done in {record['seconds']:.1f} s on {record['device']}", file=sys.stderr)
    except (ConfigError, InputError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
