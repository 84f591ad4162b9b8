"""Stage ``train_classifier@<dataset>``: train the classifier under study and measure what it relies on."""
from __future__ import annotations

import math
import sys

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from pipeline import paths
from pipeline.config import ClassifierParams
from pipeline.data import load_meta, load_prepared, shuffled_batches, to_float
from pipeline.inference import autocast, predict_probabilities
from pipeline.models import build_classifier, save_model
from pipeline.plotting import confusion_heatmap, image_grid
from pipeline.runtime import open_live, stage
from pipeline.scores import accuracy, confusion_matrix, per_class_accuracy, shortcut_reliance
from pipeline.storage import save_figure, write_csv, write_json


class NonFiniteLoss(RuntimeError):
    pass


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: ClassifierParams,
          generator: torch.Generator, on_epoch=None) -> list[dict]:
    """Train ``model`` on device-resident uint8 ``images``; ``on_epoch(epoch, record)`` after each epoch."""
    device = images.device
    steps_per_epoch = math.ceil(len(images) / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.learning_rate,
                                                   total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    history = []
    for epoch in range(cfg.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        bar = tqdm(shuffled_batches(len(images), cfg.batch_size, generator), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, file=sys.stderr, mininterval=2)
        for step, index in enumerate(bar):
            x, y = to_float(images[index]), labels[index]
            with autocast(device, cfg.mixed_precision):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        mean_loss = loss_sum.item() / len(images)
        if not math.isfinite(mean_loss):
            raise NonFiniteLoss(f"classifier loss became {mean_loss} in epoch {epoch + 1}; lower classifier.learning_rate")
        record = {"epoch": epoch + 1, "train_loss": mean_loss, "train_accuracy": correct.item() / len(images)}
        if on_epoch is not None:
            record.update(on_epoch(epoch, model) or {})
        history.append(record)
    model.eval()
    return history


def evaluate(model: nn.Module, test: dict, meta: dict, cfg: ClassifierParams) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Metrics dict, confusion matrix and predictions on the test split (in-distribution images)."""
    n_classes = meta["n_classes"]
    predicted = predict_probabilities(model, test["images"], cfg.eval_batch_size, cfg.mixed_precision).argmax(1)
    confusion = confusion_matrix(test["labels"], predicted, n_classes)
    metrics = {"test_accuracy": accuracy(predicted, test["labels"]), "per_class_accuracy": per_class_accuracy(confusion)}
    if "shortcut_images" in test:
        clean = predict_probabilities(model, test["clean_images"], cfg.eval_batch_size, cfg.mixed_precision).argmax(1)
        metrics["clean_accuracy"] = accuracy(clean, test["labels"])
        per_class = {}
        for k, label in enumerate(test["shortcut_labels"].tolist()):
            stamped = predict_probabilities(model, test["shortcut_images"][k], cfg.eval_batch_size, cfg.mixed_precision).argmax(1)
            kind = meta["shortcuts"][k]["kind"]
            per_class[f"{label}_{kind}"] = shortcut_reliance(stamped, test["labels"], label)
        metrics["shortcut_reliance"] = float(np.mean(list(per_class.values())))
        metrics["shortcut_reliance_per_class"] = per_class
    return metrics, confusion, predicted


def save_plots(dataset: str, confusion: torch.Tensor, test: dict, predicted: torch.Tensor, meta: dict, n_examples: int) -> None:
    out = paths.plots_dir(dataset, "train_classifier")
    names = meta["class_names"]
    counts = confusion.cpu().numpy()
    rows = [{"actual": names[a], "predicted": names[p]} for a in range(len(names)) for p in range(len(names))
            for _ in range(int(counts[a, p]))]
    write_csv(out / "confusion.csv", pd.DataFrame(rows, columns=["actual", "predicted"]))
    save_figure(confusion_heatmap(counts, names, f"{dataset}: test confusion (row-normalised colour, counts)"),
                out / "confusion.png")
    labels, predicted = test["labels"].cpu().numpy(), predicted.cpu().numpy()
    wrong = np.flatnonzero(labels != predicted)[: n_examples // 4]
    right = np.flatnonzero(labels == predicted)[: n_examples - len(wrong)]
    index = np.concatenate([right, wrong])
    titles = [f"true {names[labels[i]]}\npred {names[predicted[i]]}" + (" ✗" if labels[i] != predicted[i] else "")
              for i in index]
    fig = image_grid(test["images"][index].cpu().numpy(), titles, ncols=8,
                     suptitle=f"{dataset}: test inputs with true and predicted class (✗ = mistake)")
    save_figure(fig, out / "examples.png")


def main(argv: list[str] | None = None) -> None:
    with stage("train_classifier", argv) as ctx:
        cfg = ctx.params.classifier
        meta = load_meta(ctx.dataset)
        train_split = load_prepared(ctx.dataset, "train", ctx.device)
        test = load_prepared(ctx.dataset, "test", ctx.device)
        model_config = {"architecture": cfg.architecture, "n_classes": meta["n_classes"], "width": cfg.width}
        torch.manual_seed(ctx.params.seed)
        model = build_classifier(model_config).to(ctx.device)

        live = open_live(paths.plots_dir(ctx.dataset, "train_classifier") / "live")

        def log_epoch(epoch: int, model: nn.Module) -> dict:
            model.eval()
            predicted = predict_probabilities(model, test["images"], cfg.eval_batch_size, cfg.mixed_precision).argmax(1)
            return {"test_accuracy": accuracy(predicted, test["labels"])}

        history = train(model, train_split["images"], train_split["labels"], cfg, ctx.generator(), on_epoch=log_epoch)
        for record in history:
            for key in ("train_loss", "train_accuracy", "test_accuracy"):
                live.log_metric(key, record[key], plot=True)
            live.next_step()
            print(f"[train_classifier@{ctx.dataset}] epoch {record['epoch']}: loss {record['train_loss']:.4f}, "
                  f"train acc {record['train_accuracy']:.4f}, test acc {record['test_accuracy']:.4f}", file=sys.stderr)
        live.end()

        metrics, confusion, predicted = evaluate(model, test, meta, cfg)
        save_model(paths.classifier_path(ctx.dataset), model, model_config, class_names=meta["class_names"])
        write_json(paths.metrics_path(ctx.dataset, "classifier"), metrics)
        save_plots(ctx.dataset, confusion, test, predicted, meta, cfg.n_example_images)
        ctx.timer.images = cfg.epochs * len(train_split["images"])
        summary = f"test accuracy {metrics['test_accuracy']:.4f}"
        if "shortcut_reliance" in metrics:
            summary += f", clean {metrics['clean_accuracy']:.4f}, shortcut reliance {metrics['shortcut_reliance']:.3f}"
        print(f"[train_classifier@{ctx.dataset}] {summary}", file=sys.stderr)


if __name__ == "__main__":
    main()
