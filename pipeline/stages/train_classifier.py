"""Stage ``train_classifier@<dataset>``: train the classifier under study and measure what it relies on.

A dataset that names its own ``classifier`` with weights (a torchvision state dict or a TorchScript file) is
evaluated, not trained: the same metrics and pictures, no training curve and no per-epoch weights; one that
names a torchvision architecture without weights is trained here like the pipeline's own.

DVCLive logs the training as it runs (one step per epoch: training loss and accuracy, test accuracy),
then the test confusion matrix and a picture of example predictions, all under
``plots/<D>/train_classifier/live``. ``metrics/<D>/classifier.json`` holds the headline figures;
per-class and per-shortcut figures go to ``plots/<D>/train_classifier/details.json``. The weights after
every epoch are kept beside the classifier (``classifier_checkpoints/epoch_<k>.pt``, with the epoch's mean
learning rate) for ``influence@<D>``, which traces test predictions back to training images through them.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import torch
from torch import nn

from pipeline import paths
from pipeline.models.training import EpochCallback, Evaluation, evaluate, predicted_classes, train
from pipeline.config import ClassifierParams, OwnClassifierParams
from pipeline.models.external import TORCHSCRIPT, TORCHVISION
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.models.classifiers import build_seeded_classifier, classifier_from_file, save_model
from pipeline.plotting import confusion_heatmap, image_grid
from pipeline.runtime import StageContext, open_live, stage
from pipeline.evaluation.classification import accuracy
from pipeline.storage import InputError, save_figure, write_json

STAGE = "train_classifier"


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Random streams: the model's initial weights and the order of the training data
# --------------------------------------------------------------------------------------------
def initial_classifier(ctx: StageContext, config: dict) -> nn.Module:
    """The classifier with initial weights from this stage's stream ``model_init`` (its own per dataset)."""
    seed = int(ctx.rng("model_init").integers(2**31 - 1))
    return build_seeded_classifier(config, seed).to(ctx.device)


def data_order_generator(ctx: StageContext) -> torch.Generator:
    """The stream that shuffles the training data; on the CPU, so a CPU and a GPU run see the same order."""
    return ctx.generator("data_order", device="cpu")


# --------------------------------------------------------------------------------------------
# Logging and pictures
# --------------------------------------------------------------------------------------------
def live_epoch_logger(live, test: dict, cfg: ClassifierParams, dataset: str) -> EpochCallback:
    """An ``on_epoch`` callback that measures test accuracy and logs the epoch to DVCLive as one step."""

    def log_epoch(record: dict, model: nn.Module) -> dict:
        model.eval()
        measured = {"test_accuracy": accuracy(predicted_classes(model, test["images"], cfg), test["labels"])}
        logged = record | measured
        for key in ("train_loss", "train_accuracy", "test_accuracy"):
            live.log_metric(key, logged[key])
        live.next_step()
        log(dataset, f"epoch {logged['epoch']}: loss {logged['train_loss']:.4f}, "
                     f"train acc {logged['train_accuracy']:.4f}, test acc {logged['test_accuracy']:.4f}")
        return measured

    return log_epoch


def checkpoint_saver(dataset: str, model_config: dict) -> EpochCallback:
    """An ``on_epoch`` callback that keeps the weights after the epoch, with its epoch and mean learning rate."""
    shutil.rmtree(paths.classifier_checkpoint_dir(dataset), ignore_errors=True)  # no stale epochs of a longer run

    def save_epoch(record: dict, model: nn.Module) -> None:
        save_model(paths.classifier_checkpoint_path(dataset, record["epoch"]), model, model_config,
                   epoch=record["epoch"], learning_rate=record["learning_rate"])

    return save_epoch


def both(first: EpochCallback, second: EpochCallback) -> EpochCallback:
    """One ``on_epoch`` callback that calls ``first`` then ``second`` and merges what they return."""
    return lambda record, model: (first(dict(record), model) or {}) | (second(dict(record), model) or {})


def examples_figure(test: dict, predicted: torch.Tensor, names: list[str], n_examples: int, dataset: str):
    """Test images with their true and predicted class: a quarter of them mistakes, when there are any."""
    labels, predicted = test["labels"].cpu().numpy(), predicted.cpu().numpy()
    wrong = np.flatnonzero(labels != predicted)[: n_examples // 4]
    right = np.flatnonzero(labels == predicted)[: n_examples - len(wrong)]
    index = np.concatenate([right, wrong])
    titles = [f"true {names[labels[i]]}\npred {names[predicted[i]]}" + (" ✗" if labels[i] != predicted[i] else "")
              for i in index]
    return image_grid(test["images"][torch.as_tensor(index, device=test["images"].device)].cpu().numpy(), titles,
                      ncols=8, suptitle=f"{dataset}: test inputs with true and predicted class (✗ = mistake)")


def log_evaluation(live, evaluation: Evaluation, test: dict, names: list[str], n_examples: int, dataset: str) -> None:
    """The test confusion matrix and the examples picture, through DVCLive."""
    actual = [names[i] for i in test["labels"].tolist()]
    predicted = [names[i] for i in evaluation.predicted.tolist()]
    live.log_sklearn_plot("confusion_matrix", actual, predicted, name="confusion_matrix.json",
                          title=f"{dataset}: test confusion", x_label="actual class", y_label="predicted class")
    live.log_image("examples.png", examples_figure(test, evaluation.predicted, names, n_examples, dataset))


def save_confusion_picture(dataset: str, confusion: torch.Tensor, names: list[str]) -> None:
    save_figure(confusion_heatmap(confusion.cpu().numpy(), names, f"{dataset}: test confusion (row-normalised colour, counts)"),
                paths.pictures_dir(dataset, STAGE) / "confusion.png")


# --------------------------------------------------------------------------------------------
# A classifier of your own
# --------------------------------------------------------------------------------------------
def own_model_config(own: OwnClassifierParams, n_classes: int, input_shape: tuple[int, ...]) -> dict:
    """The classifier config (``build_classifier``) of the dataset's own classifier."""
    return {"architecture": TORCHVISION if own.torchvision else TORCHSCRIPT, TORCHVISION: own.torchvision,
            "n_classes": n_classes, "input_shape": tuple(input_shape), "mean": own.mean, "std": own.std,
            "input_size": own.input_size, "gradcam_layer": own.gradcam_layer, "features_layer": own.features_layer}


def given_classifier(own: OwnClassifierParams, config: dict, dataset: str, device) -> tuple[nn.Module, dict]:
    """Your trained classifier, read from its file and checked against the data; and what to save with it."""
    try:
        return classifier_from_file(config, own.weights or own.torchscript, device)
    except FileNotFoundError:
        raise InputError(f"{own.weights or own.torchscript} (params: datasets.{dataset}.classifier) does not exist; "
                         "give the path of your trained model") from None
    except (ValueError, RuntimeError) as err:  # on one line: torch's own text may span several
        raise InputError(f"datasets.{dataset}.classifier: {' '.join(str(err).split())}") from None


def main(argv: list[str] | None = None) -> None:
    with stage(STAGE, argv) as ctx:
        cfg, own = ctx.params.classifier, ctx.entry.classifier
        meta, answer = load_meta(ctx.dataset), load_known_answer(ctx.dataset)
        train_split = load_prepared(ctx.dataset, "train", ctx.device)
        test = load_prepared(ctx.dataset, "test", ctx.device)
        model_config = {"architecture": cfg.architecture, "n_classes": meta["n_classes"], "width": cfg.width,
                        "input_shape": tuple(train_split["images"].shape[1:])}
        if own is not None:
            model_config = own_model_config(own, meta["n_classes"], model_config["input_shape"])
        out, extra = paths.plots_dir(ctx.dataset, STAGE), {}
        if not ctx.entry.trains_classifier:  # read and checked before anything is written or deleted
            model, extra = given_classifier(own, model_config, ctx.dataset, ctx.device)

        with open_live(out / "live") as live:
            if ctx.entry.trains_classifier:
                model = initial_classifier(ctx, model_config)
                train(model, train_split["images"], train_split["labels"], cfg, data_order_generator(ctx),
                      on_epoch=both(live_epoch_logger(live, test, cfg, ctx.dataset),
                                    checkpoint_saver(ctx.dataset, model_config)))
            else:
                shutil.rmtree(paths.classifier_checkpoint_dir(ctx.dataset), ignore_errors=True)
                paths.classifier_checkpoint_dir(ctx.dataset).mkdir(parents=True)  # no epochs: influence says so
                log(ctx.dataset, f"evaluating your classifier ({own.weights or own.torchscript}), not training one")
                live.log_metric("test_accuracy", accuracy(predicted_classes(model, test["images"], cfg), test["labels"]))
                live.next_step()  # the training curve of a classifier trained elsewhere: its test accuracy
            evaluation = evaluate(model, test, answer, meta["class_names"], cfg)
            log_evaluation(live, evaluation, test, meta["class_names"], cfg.n_example_images, ctx.dataset)

        save_model(paths.classifier_path(ctx.dataset), model, model_config, class_names=meta["class_names"], **extra)
        write_json(paths.metrics_path(ctx.dataset, "classifier"), evaluation.metrics)
        write_json(out / "details.json", evaluation.details)
        save_confusion_picture(ctx.dataset, evaluation.confusion, meta["class_names"])
        ctx.timer.images = cfg.epochs * len(train_split["images"]) if ctx.entry.trains_classifier else len(test["labels"])
        log(ctx.dataset, summary(evaluation.metrics))


def summary(metrics: dict) -> str:
    text = f"test accuracy {metrics['test_accuracy']:.4f}"
    if "shortcut_reliance" in metrics:
        text += (f", clean {metrics['clean_accuracy']:.4f}, shortcut reliance {metrics['shortcut_reliance']:.3f}"
                 f" (base rate without the stamp {metrics['shortcut_base_rate']:.3f})")
    return text


if __name__ == "__main__":
    main()
