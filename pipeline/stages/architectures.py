"""Stage ``architectures@<dataset>``: several architectures trained alike; what each learns, how alike their maps are.

Each of ``architectures.names`` is trained as ``train_classifier`` trains the classifier (``classifier`` params,
``architectures.epochs`` may override the epochs), from the same seed, on the same data in the same order, and
evaluated as it is (test accuracy; planted shortcuts: shortcut reliance). Every model then explains the same seeded
test images for their true class (planted shortcuts: also clean images of other classes stamped with the shortcut,
for its class). ``metrics/<D>/architectures.json`` (test accuracy: details only, to keep the metrics few): planted
shortcuts ``shortcut_reliance_<a>`` and ``relevance_mass_<a>_lift`` (``_lift_low``, ``_lift_high``): the relevance
mass on the shortcut's truth region of stamped images beside a uniform map on each method's own support, per image
averaged over the methods that every architecture scored; colored MNIST ``digit_relevance_mass_<a>_lift`` likewise
on the digit's pixels. Per-method
lifts, colored MNIST's colormap alignment (no chance level: details only), pairwise rank correlations go to
``plots/<D>/architectures/details.json`` and ``correlation.csv``; models to ``data/models/<D>/architectures/``.
"""
from __future__ import annotations

import dataclasses
import sys
import warnings

import torch

from pipeline import paths
from pipeline.attribution.scores import colormap_channel_std, foreground_mask
from pipeline.data.known_answer import ColorRule, PlantedShortcuts, Unknown
from pipeline.data.tensors import subsample
from pipeline.evaluation.architectures import (ComparisonOptions, attribution_maps, colormap_alignment, correlation_figure,
                                               maps_figure, mean_over_shared_methods, pairwise_correlations,
                                               relevance_lifts, train_alike)
from pipeline.models.classifiers import build_seeded_classifier, frozen, save_model
from pipeline.models.inference import predict_probabilities
from pipeline.models.training import evaluate
from pipeline.prepared import load_known_answer, load_meta, load_prepared
from pipeline.runtime import stage
from pipeline.storage import save_figure, write_csv, write_json

STAGE = "architectures"


def log(dataset: str, message: str) -> None:
    print(f"[{STAGE}@{dataset}] {message}", file=sys.stderr)


def image_sets(test: dict, answer, n_images: int, rng) -> dict:
    """``sample``: seeded test images with their true class as target. Planted shortcuts also ``stamped``: per shortcut,
    as many seeded clean test images of other classes with it stamped on, target its class, and its truth region
    (``masks``)."""
    device = test["labels"].device
    chosen = torch.as_tensor(subsample(len(test["labels"]), n_images, rng), device=device)
    sets = {"sample": {"images": test["images"][chosen], "targets": test["labels"][chosen]}}
    if isinstance(answer, PlantedShortcuts) and answer.shortcuts:
        parts = []
        for k, label in enumerate(answer.labels):
            others = torch.nonzero(test["labels"] != label).squeeze(1)
            keep = others[torch.as_tensor(subsample(len(others), n_images, rng), device=device)]
            parts.append({"images": answer.stamp_tensor(test["clean_images"][keep], k), "targets": torch.full_like(keep, label),
                          "masks": answer.regions(device)[k].expand(len(keep), -1, -1)})
        sets["stamped"] = {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return sets


def known_answer_scores(models: dict, sets: dict, maps: dict, answer, class_names: list[str], batch_size: int,
                        streams) -> tuple[dict, dict]:
    """({figure: (per architecture: Lift over the shared methods, per architecture and method: Lift, shared methods)},
    colored MNIST's colormap alignment {architecture: {method: value}}); the first figure is the headline."""
    if isinstance(answer, ColorRule):
        digit = foreground_mask(sets["sample"]["images"])
        alignment = colormap_alignment(maps["sample"], sets["sample"]["targets"], class_names,
                                       colormap_channel_std(list(answer.colormaps)))
        return {"digit_relevance_mass": relevance_lifts(maps["sample"], digit, lambda n: streams(f"digit/{n}"))}, alignment
    if "stamped" not in sets:
        return {}, {}
    stamped = sets["stamped"]
    fooled = {a: predict_probabilities(m, stamped["images"], batch_size).argmax(1) == stamped["targets"] for a, m in models.items()}
    return {"relevance_mass": relevance_lifts(maps["stamped"], stamped["masks"], lambda n: streams(f"stamped/{n}")),
            "relevance_mass_flipped": relevance_lifts(maps["stamped"], stamped["masks"], lambda n: streams(f"flipped/{n}"),
                                                      among=fooled, reason_if_empty="the stamp moves none of these images "
                                                                                    "into the shortcut's class")}, {}


def save_pictures(dataset: str, sets: dict, maps: dict, correlations: dict, names: list[str], methods: list[str],
                  class_names: list[str], n_rows: int) -> None:
    out = paths.pictures_dir(dataset, STAGE)
    shown = {"sample": n_rows - n_rows // 2, "stamped": n_rows // 2} if "stamped" in sets else {"sample": n_rows}
    images = torch.cat([sets[k]["images"][:n] for k, n in shown.items()]).cpu().numpy()
    titles = [("stamped, for " if k == "stamped" else "for ") + class_names[t]
              for k, n in shown.items() for t in sets[k]["targets"][:n].tolist()]
    rows = {a: {m: torch.cat([maps[k][a][m][:n] for k, n in shown.items()]).cpu().numpy() for m in maps["sample"][a]}
            for a in names}
    save_figure(maps_figure(images, rows, methods, titles, f"{dataset}: |attribution| of each architecture, same images "
                                                           f"and targets"), out / "maps.png")
    save_figure(correlation_figure(correlations, names, methods, f"{dataset}: rank correlation of the architectures' maps "
                                                                 f"(mean over images)"), out / "correlation.png")


def correlation_frame(correlations: dict):
    """One row per image set, pair of architectures and method: the mean rank correlation of their maps."""
    import pandas as pd

    rows = [{"comparison": f"{pair}, {method}" + (f" ({key})" if key != "sample" else ""), "images": key, "pair": pair,
             "method": method, "spearman": value}
            for key, per_pair in correlations.items() for pair, per_method in per_pair.items()
            for method, value in per_method.items()]
    return pd.DataFrame(rows, columns=["comparison", "images", "pair", "method", "spearman"])


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum.*")
    warnings.filterwarnings("ignore", message=r".*(require gradients|non-linear activations|requires_grad).*")
    with stage(STAGE, argv) as ctx:
        cfg, dataset, device = ctx.params.architectures, ctx.dataset, ctx.device
        training = dataclasses.replace(ctx.params.classifier, epochs=cfg.epochs or ctx.params.classifier.epochs)
        meta, names, answer = load_meta(dataset), list(cfg.names), load_known_answer(dataset)
        train_split, test = load_prepared(dataset, "train", device), load_prepared(dataset, "test", device)
        init_seed = int(ctx.rng("model_init").integers(2**31 - 1))
        configs = {a: {"architecture": a, "n_classes": meta["n_classes"], "width": training.width,
                       "input_shape": tuple(train_split["images"].shape[1:])} for a in names}
        models = {a: build_seeded_classifier(c, init_seed).to(device) for a, c in configs.items()}
        log(dataset, f"training {', '.join(names)} for {training.epochs} epochs on {len(train_split['labels'])} images each")
        histories, seconds = train_alike(models, train_split["images"], train_split["labels"], training,
                                         lambda: ctx.generator("data_order"))
        evaluations = {a: evaluate(m, test, answer, meta["class_names"], training) for a, m in models.items()}
        for a, model in models.items():
            save_model(paths.architectures_dir(dataset) / f"{a}.pt", model, configs[a], class_names=meta["class_names"])
        models = {a: frozen(m, device) for a, m in models.items()}

        options = ComparisonOptions(tuple(cfg.methods), cfg.ig_steps, cfg.batch_size, cfg.internal_batch_size)
        sets = image_sets(test, answer, cfg.n_images, ctx.rng("images"))
        maps, correlations = {}, {}
        for key, images in sets.items():
            maps[key], skipped = attribution_maps(models, images["images"], images["targets"], options)
            correlations[key] = pairwise_correlations(maps[key], cfg.methods)
        for a, reasons in skipped.items():
            log(dataset, f"{a}: skipping " + "; ".join(f"{m} ({why})" for m, why in reasons.items()))
        scores, alignment = known_answer_scores(models, sets, maps, answer, meta["class_names"], cfg.internal_batch_size,
                                                lambda name: ctx.generator(f"chance/{name}"))
        headline = next(iter(scores), None)

        aligned = mean_over_shared_methods(alignment)[0] if alignment else {}   # no chance level: details only
        metrics, per_architecture = {}, {}
        for a in names:
            measured = {k: evaluations[a].metrics[k] for k in ("shortcut_reliance",) if k in evaluations[a].metrics}
            metrics.update({f"{k}_{a}": v for k, v in measured.items()} | (scores[headline][0][a].metrics(f"{headline}_{a}")
                                                                           if headline else {}))
            per_architecture[a] = evaluations[a].metrics | {figure: lifts[0][a].score for figure, lifts in scores.items()} | (
                {"colormap_alignment": aligned[a]} if aligned else {}) | {
                "final_train_loss": histories[a][-1]["train_loss"], "parameters": sum(p.numel() for p in models[a].parameters())}
        details = {"epochs": training.epochs, "n_train_images": len(train_split["labels"]), "methods": list(cfg.methods),
                   "n_images": {k: len(s["targets"]) for k, s in sets.items()}, "headline_score": headline,
                   "headline_methods": scores[headline][2] if headline else [], "skipped": skipped,
                   "architectures": per_architecture,
                   "chance": {figure: {a: lift.to_dict() for a, lift in lifts[0].items()} for figure, lifts in scores.items()},
                   "chance_per_method": {figure: {a: {m: lift.to_dict() for m, lift in per.items()} for a, per in lifts[1].items()}
                                         for figure, lifts in scores.items()},
                   **({"colormap_alignment": alignment} if alignment else {}),
                   **{("rank_correlation" if k == "sample" else f"rank_correlation_{k}"): c for k, c in correlations.items()},
                   "evaluation": {a: e.details for a, e in evaluations.items()}, "history": histories,
                   **({} if answer.known else {"skipped_scores": Unknown.reason})}
        if "stamped" in sets:   # what a map spread evenly over the image puts on the shortcut
            details["shortcut_area_fraction"] = sets["stamped"]["masks"].float().mean().item()
        write_json(paths.metrics_path(dataset, STAGE), metrics)
        out = paths.plots_dir(dataset, STAGE)
        write_json(out / "details.json", details)
        write_csv(out / "correlation.csv", correlation_frame(correlations))
        save_pictures(dataset, sets, maps, correlations, names, list(cfg.methods), meta["class_names"], cfg.n_picture_images)
        ctx.timer.images = training.epochs * len(train_split["labels"]) * len(names)
        ctx.timer.details = {f"train_seconds_{a}": s for a, s in seconds.items()}
        log(dataset, "; ".join(f"{a}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if f"_{a}" in k)
                               for a in names))


if __name__ == "__main__":
    main()
