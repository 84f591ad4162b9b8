"""Stage ``explain@<dataset>``: discriminative attribution on (real, counterfactual) pairs, scored.

For every pair whose counterfactual the classifier assigns to its target, each attribution method
gives a map; the sweep (:mod:`pipeline.attribution.discriminative`) turns it into masks of growing size, copies
the masked region from the counterfactual into the real image, and records how far the target's
probability rises. The area under that curve is the method's score for the pair; the mask that
minimises (size - score change) is its optimal mask. Where the answer is known (the planted
shortcut, the digit vs. the color) the optimal masks are scored against it.

``metrics/<D>/explain.json`` holds the headline figures only (:func:`headline_metrics`); every
figure per method, per class pair, of the control pairs and of the color rule goes to
``plots/<D>/explain/details.json``.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline import paths
from pipeline.config import ExplainParams
from pipeline.data.tensors import subsample, to_float, to_uint8
from pipeline.prepared import load_meta, load_prepared
from pipeline.attribution.discriminative import (DISCRIMINATIVE, METHODS, MaskSettings, attribution_maps, batched, mask_overlap,
                                     normalise_maps, optimal_masks, score_pairs, size_grid, sweep)
from pipeline.models.inference import moved_by_stamp, predict_probabilities
from pipeline.models.classifiers import load_classifier
from pipeline.runtime import stage
from pipeline.storage import InputError, load_arrays, save_arrays, save_figure, write_csv, write_json

CONTRACT_KEYS = ("real", "counterfactual", "counterfactual_latent", "image_index", "source", "target",
                 "predicted", "target_probability", "predicted_latent", "target_probability_latent")


def explanations_dir(dataset: str):
    return paths.DATA / "explanations" / dataset


@dataclass
class Pairs:
    real: torch.Tensor            # float [N,3,H,W] in [0, 1] on the device
    counterfactual: torch.Tensor  # float [N,3,H,W]
    image_index: torch.Tensor     # [N] into the prepared test split
    source: torch.Tensor          # [N]
    target: torch.Tensor          # [N]
    n_pairs: int                  # in the file
    n_reaching_target: int        # of those, assigned to their target (before max_pairs)


def load_pairs(dataset: str, cfg: ExplainParams, device: torch.device, rng: np.random.Generator) -> Pairs:
    """The counterfactual pairs the classifier assigns to their target (at most ``max_pairs``, seeded)."""
    path = paths.counterfactuals_path(dataset)
    arrays = load_arrays(path, made_by=f"counterfactuals@{dataset}")
    missing = [key for key in CONTRACT_KEYS if key not in arrays]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; re-run `dvc repro counterfactuals@{dataset}`")
    suffix = "" if cfg.counterfactual == "reference" else "_latent"
    keep = np.flatnonzero(arrays["predicted" + suffix] == arrays["target"])
    n_reaching = len(keep)
    if cfg.max_pairs is not None and len(keep) > cfg.max_pairs:
        keep = np.sort(rng.choice(keep, size=cfg.max_pairs, replace=False))
    take = lambda key: torch.from_numpy(np.ascontiguousarray(arrays[key][keep])).to(device)  # noqa: E731
    return Pairs(to_float(take("real")), to_float(take("counterfactual" + suffix)), take("image_index").long(),
                 take("source").long(), take("target").long(), len(arrays["target"]), n_reaching)


def method_maps(method: str, model, pairs: Pairs, cfg: ExplainParams, generator: torch.Generator) -> torch.Tensor:
    """Normalised maps of every pair for one method, batched."""
    def one_batch(part: slice) -> torch.Tensor:
        raw = attribution_maps(method, model, pairs.real[part], pairs.counterfactual[part], pairs.source[part],
                               ig_steps=cfg.ig_steps, random_sigma=cfg.random_sigma, generator=generator,
                               target=pairs.target[part], attributed=cfg.attributed)
        return normalise_maps(raw, cfg.mask_channels)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # captum notes that it sets requires_grad on inputs
        return batched(one_batch, len(pairs.real), cfg.attribution_batch_size, desc=f"{method} maps")


def summarise(values: torch.Tensor) -> tuple[float, float]:
    """Median and interquartile range (NaN when empty)."""
    if len(values) == 0:
        return float("nan"), float("nan")
    q = torch.quantile(values.float().cpu(), torch.tensor([0.25, 0.5, 0.75]))
    return q[1].item(), (q[2] - q[0]).item()


def method_metrics(scores, target: torch.Tensor) -> dict:
    median, iqr = summarise(scores.score)
    n = len(scores.score)
    return {
        "median_score": median,
        "iqr_score": iqr,
        "mean_optimal_mask_size": scores.optimal_mask_size.mean().item() if n else float("nan"),
        "reached_target_fraction": (scores.optimal_predicted == target).float().mean().item() if n else float("nan"),
    }


def shortcut_truth(test: dict, pairs: Pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(selected [N] bool, truth masks [N,H,W]): pairs translated into a shortcut class and its mask."""
    alpha, labels = test["shortcut_alpha"], test["shortcut_labels"]
    selected = torch.zeros(len(pairs.target), dtype=torch.bool, device=pairs.target.device)
    truth = torch.zeros(len(pairs.target), *alpha.shape[1:], dtype=torch.bool, device=pairs.target.device)
    for k in range(len(labels)):
        into = pairs.target == labels[k]
        selected |= into
        truth[into] |= alpha[k] > 0
    return selected, truth


def stamped_control_pairs(model, test: dict, n_pairs: int, rng: np.random.Generator) -> Pairs:
    """GAN-free control pairs: (clean test image, the same image with a shortcut stamped on it), for
    images of other classes that the stamp alone moves into the shortcut's class (at most ``n_pairs``,
    seeded). Their only difference is the stamp, so a method's optimal masks here show how well it
    can find the shortcut at all, apart from what the GAN changes besides it."""
    clean, labels, shortcut_labels = test["clean_images"], test["labels"], test["shortcut_labels"]
    shortcut, index, n_candidates = moved_by_stamp(model, test)
    n_moved = len(index)
    keep = torch.as_tensor(subsample(n_moved, n_pairs, rng), device=index.device)
    shortcut, index = shortcut[keep], index[keep]
    return Pairs(to_float(clean[index]), to_float(test["shortcut_images"][shortcut, index]), index, labels[index],
                 shortcut_labels[shortcut], n_pairs=n_candidates, n_reaching_target=n_moved)


def explain_pairs(method: str, model, pairs: Pairs, cfg: ExplainParams, settings: MaskSettings, grid: torch.Tensor,
                  generator: torch.Generator, progress: str | None = None):
    """One method on a set of pairs: (normalised maps, :class:`PairScores`, binary and soft optimal masks)."""
    maps = method_maps(method, model, pairs, cfg, generator)
    result = sweep(model, pairs.real, pairs.counterfactual, maps, pairs.target, settings, cfg.batch_size,
                   cfg.mixed_precision, progress=progress)
    scores = score_pairs(result, settings, grid)
    binary, soft = optimal_masks(maps, scores.optimal_threshold, settings)
    return maps, scores, binary, soft


def shortcut_overlap(binary: torch.Tensor, soft: torch.Tensor, truth: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Mean IoU and share of mask mass on the shortcut over the pairs ``truth`` selects."""
    selected, masks = truth
    iou, share = mask_overlap(binary[selected], soft[selected], masks[selected])
    return {"shortcut_iou": iou.mean().item() if len(iou) else float("nan"),
            "shortcut_mass_fraction": share.mean().item() if len(share) else float("nan")}


def stamped_control(model, test: dict, cfg: ExplainParams, settings: MaskSettings, grid: torch.Tensor,
                    generator: torch.Generator, rng: np.random.Generator) -> dict:
    """Every method on the stamped control pairs: median score, IoU and mass share on the shortcut."""
    pairs = stamped_control_pairs(model, test, cfg.control_pairs, rng)
    truth = shortcut_truth(test, pairs)
    methods = {}
    for method in cfg.methods if len(pairs.target) else ():
        _, scores, binary, soft = explain_pairs(method, model, pairs, cfg, settings, grid, generator)
        methods[method] = {"median_score": summarise(scores.score)[0], **shortcut_overlap(binary, soft, truth)}
    return {"n_pairs": len(pairs.target), "n_moved_by_stamp": pairs.n_reaching_target, "methods": methods}


def best_discriminative(metrics: dict) -> str | None:
    """The discriminative method with the highest median score in ``metrics`` (method -> entry)."""
    candidates = [(m, metrics[m]["median_score"]) for m in DISCRIMINATIVE if m in metrics]
    candidates = [(m, s) for m, s in candidates if s == s]  # drop NaN
    return max(candidates, key=lambda item: item[1])[0] if candidates else None


# --------------------------------------------------------------------------------------------
# Metrics: the headline figures, and the details beside them
# --------------------------------------------------------------------------------------------
HEADLINE_METHODS = ("d_ig", "d_deeplift", "ig", "deeplift", "residual", "random")
NAN = float("nan")


def headline_metrics(n_kept: int, per_method: dict, best: str | None, control: dict | None) -> dict:
    """What ``metrics/<D>/explain.json`` holds: the pairs explained, the median score of each headline
    method (discriminative, vanilla and the two controls; NaN when not run) and, where a shortcut is
    planted (``control`` given, possibly empty), the shortcut IoU of the best discriminative method on
    GAN pairs into the shortcut class and on the stamped control pairs."""
    metrics = {"n_pairs_kept": n_kept}
    metrics.update({f"median_score_{m}": per_method.get(m, {}).get("median_score", NAN) for m in HEADLINE_METHODS})
    if control is not None:
        control_methods = control.get("methods", {})
        control_best = best or best_discriminative(control_methods)
        metrics["shortcut_iou"] = per_method.get(best, {}).get("shortcut_iou", NAN)
        metrics["stamped_control_shortcut_iou"] = control_methods.get(control_best, {}).get("shortcut_iou", NAN)
    return metrics


def class_pair_details(pairs: Pairs, results: dict, class_names: list[str]) -> dict:
    """Per (source, target) class pair: how many pairs, and each method's median score and
    share of optimal masks whose hybrid the classifier assigns to the target."""
    source, target = pairs.source.cpu().numpy(), pairs.target.cpu().numpy()
    target_cpu = pairs.target.cpu()
    on_host = {method: (scores.score.cpu(), scores.optimal_predicted.cpu()) for method, (_, scores) in results.items()}
    per_pair = {}
    for s, t in sorted(set(zip(source.tolist(), target.tolist()))):
        members = torch.as_tensor(np.flatnonzero((source == s) & (target == t)))
        entry = {"n_pairs": len(members)}
        sub_target = target_cpu[members]
        for method, (score, optimal_predicted) in on_host.items():
            entry[method] = {"median_score": summarise(score[members])[0],
                             "reached_target_fraction": (optimal_predicted[members] == sub_target).float().mean().item()}
        per_pair[f"{class_names[s]}_to_{class_names[t]}"] = entry
    return per_pair


# --------------------------------------------------------------------------------------------
# Colored MNIST: which color rule did the classifier learn?
# --------------------------------------------------------------------------------------------
def color_rule(model, test: dict, class_names: list[str], batch_size: int) -> tuple[dict, pd.DataFrame]:
    """The classifier's decision on every test image against its colormap position and color.

    ``nearest_colormap_agreement``: how often the decision equals the colormap whose curve passes
    closest (in RGB) to the image's color, i.e. how well "nearest colormap" describes the rule."""
    import matplotlib
    from matplotlib.colors import rgb_to_hsv

    predicted = predict_probabilities(model, test["images"], batch_size).argmax(1).cpu().numpy()
    colors = test["colors"].cpu().numpy()
    labels = test["labels"].cpu().numpy()
    positions = test["positions"].cpu().numpy()
    distance = np.stack([  # [N, K]: RGB distance from each image's color to each colormap's curve
        np.linalg.norm(colors[:, None, :] - matplotlib.colormaps[name](np.linspace(0, 1, 256))[None, :, :3].astype(np.float32),
                       axis=-1).min(axis=1)
        for name in class_names], axis=1)
    nearest = distance.argmin(axis=1)
    frame = pd.DataFrame({
        "position": positions, "hue": rgb_to_hsv(np.clip(colors, 0, 1))[:, 0],
        "red": colors[:, 0], "green": colors[:, 1], "blue": colors[:, 2],
        "colormap": [class_names[c] for c in labels], "predicted": [class_names[c] for c in predicted],
        "nearest_colormap": [class_names[c] for c in nearest],
        "correct": predicted == labels,
    })
    metrics = {
        "test_accuracy": float((predicted == labels).mean()) if len(labels) else NAN,
        "nearest_colormap_agreement": float((predicted == nearest).mean()) if len(labels) else NAN,
        "accuracy_by_position": {
            f"{lo:.2f}-{lo + 0.25:.2f}": float((predicted == labels)[(positions >= lo) & (positions < lo + 0.25)].mean())
            if ((positions >= lo) & (positions < lo + 0.25)).any() else NAN
            for lo in (0.0, 0.25, 0.5, 0.75)
        },
    }
    return metrics, frame


def color_rule_table(frame: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Per bin of colormap position (its centre): the share of test images the classifier assigns to
    their colormap (``accuracy``) and to the colormap nearest their color (``nearest_colormap_agreement``).
    Wide: one column per series, so `dvc plots` draws two lines."""
    bins = np.minimum((frame["position"].to_numpy() * n_bins).astype(int), n_bins - 1)
    agrees = frame["predicted"] == frame["nearest_colormap"]
    return pd.DataFrame({
        "position": (np.arange(n_bins) + 0.5) / n_bins,
        "accuracy": [frame["correct"][bins == b].mean() if (bins == b).any() else NAN for b in range(n_bins)],
        "nearest_colormap_agreement": [agrees[bins == b].mean() if (bins == b).any() else NAN for b in range(n_bins)],
    })


def plot_color_rule(frame: pd.DataFrame, class_names: list[str], dataset: str, path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    rows = {name: i for i, name in enumerate(class_names)}
    palette = plt.get_cmap("tab10")
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, len(frame))
    for name in class_names:
        chosen = frame["predicted"] == name
        axes[0].scatter(frame["position"][chosen], frame["colormap"].map(rows)[chosen] + jitter[chosen.to_numpy()],
                        s=6, color=palette(rows[name]), label=f"predicted {name}")
    axes[0].set_yticks(range(len(class_names)), class_names)
    axes[0].set_xlabel("position along the colormap (s)")
    axes[0].set_ylabel("true colormap (class)")
    axes[0].set_title("decision vs. colormap position", fontsize=9)
    axes[0].legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[1].scatter(frame["hue"], frame["position"], s=8, c=frame[["red", "green", "blue"]].to_numpy(),
                    edgecolors=[palette(rows[p]) for p in frame["predicted"]], linewidths=0.6)
    axes[1].set_xlabel("hue of the image's color (fill = the color)")
    axes[1].set_ylabel("position s")
    axes[1].set_title("edge color = predicted class", fontsize=9)
    fig.suptitle(f"{dataset}: what the classifier decides from the color", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------
# Plot data and pictures
# --------------------------------------------------------------------------------------------
def curve_quartiles(curves: torch.Tensor) -> np.ndarray:
    """[3, G]: 25th, 50th and 75th percentile over the pairs' curves at each mask size."""
    return torch.quantile(curves.float().cpu(), torch.tensor([0.25, 0.5, 0.75]), dim=0).numpy()


def curve_table(grid: np.ndarray, quartiles: dict[str, np.ndarray]) -> pd.DataFrame:
    """Median score change at each mask size, one column per method of METHODS (empty for a method
    not run, so the columns dvc.yaml names are always there). Wide: `dvc plots` draws one line each."""
    frame = pd.DataFrame({"mask_size": grid})
    for method in METHODS:
        frame[method] = quartiles[method][1] if method in quartiles else NAN
    return frame


def shortcut_table(methods: list[str], per_method: dict, control: dict) -> pd.DataFrame:
    """One bar per (method, pair set): IoU of the optimal masks with the shortcut on GAN pairs into
    the shortcut class and on the stamped control pairs (one series: the bars' labels carry both)."""
    control_methods = control.get("methods", {})
    rows = []
    for method in methods:
        rows.append({"pairs": f"{method}: GAN pairs", "shortcut_iou": per_method[method].get("shortcut_iou", NAN)})
        rows.append({"pairs": f"{method}: stamped control", "shortcut_iou": control_methods.get(method, {}).get("shortcut_iou", NAN)})
    return pd.DataFrame(rows)


def plot_curves(grid: np.ndarray, quartiles: dict[str, np.ndarray], dataset: str, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (method, (q25, median, q75)) in enumerate(quartiles.items()):
        style = "-" if method.startswith("d_") else "--"
        ax.plot(grid, median, style, color=plt.get_cmap("tab10")(i), label=method)
        ax.fill_between(grid, q25, q75, color=plt.get_cmap("tab10")(i), alpha=0.15)
    ax.set_xlabel("mask size (share of the image)")
    ax.set_ylabel("score change  p_target(hybrid) - p_target(real)")
    ax.set_title(f"{dataset}: median curve per method (band: IQR)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_scores(score_rows: pd.DataFrame, dataset: str, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(score_rows) + 1.2))
    y = np.arange(len(score_rows))
    colors = ["tab:blue" if m.startswith("d_") else "tab:gray" for m in score_rows["method"]]
    ax.barh(y, score_rows["median_score"], xerr=[score_rows["median_score"] - score_rows["q25_score"],
                                                 score_rows["q75_score"] - score_rows["median_score"]],
            color=colors, capsize=3)
    ax.set_yticks(y, score_rows["method"])
    ax.invert_yaxis()
    ax.set_xlabel("score: area under score change over mask size (median, IQR)")
    ax.set_title(f"{dataset}: explanation score per method (blue: discriminative)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot_shortcut_overlap(frame: pd.DataFrame, dataset: str, path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.45 * len(frame) + 1.2))
    y = np.arange(len(frame))
    ax.barh(y - 0.27, frame["shortcut_iou"], height=0.27, label="IoU of the optimal mask with the shortcut")
    ax.barh(y, frame["shortcut_mass_fraction"], height=0.27, label="share of mask mass on the shortcut")
    ax.barh(y + 0.27, frame["control_shortcut_iou"], height=0.27, color="tab:gray",
            label="IoU on the control (clean image vs. the same image stamped)")
    ax.set_yticks(y, frame["method"])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"{dataset}: pairs translated into a shortcut class", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def heat(maps: np.ndarray) -> np.ndarray:
    """[N,C,H,W] in [0, 1] -> [N,3,H,W] inferno colors (channel mean)."""
    import matplotlib

    rgb = matplotlib.colormaps["inferno"](maps.mean(axis=1))[..., :3]
    return np.transpose(rgb, (0, 3, 1, 2)).astype(np.float32)


def save_gallery(model, pairs: Pairs, method: str, maps: torch.Tensor, scores, settings: MaskSettings,
                 class_names: list[str], top_k: int, folder, dataset: str) -> int:
    """Per target class one PNG: for each source, the top-k pairs by score, as
    real | counterfactual | attribution | optimal mask | hybrid, titled with probabilities."""
    from pipeline.plotting import image_grid

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.png"):
        stale.unlink()
    source, target = pairs.source.cpu().numpy(), pairs.target.cpu().numpy()
    score = scores.score.cpu().numpy()
    written = 0
    for t in np.unique(target):
        chosen = []
        for s in np.unique(source[target == t]):
            members = np.flatnonzero((source == s) & (target == t))
            chosen.extend(members[np.argsort(-score[members], kind="stable")[:top_k]])
        index = torch.as_tensor(np.array(chosen), device=pairs.real.device)
        real, cf = pairs.real[index], pairs.counterfactual[index]
        _, soft = optimal_masks(maps[index], scores.optimal_threshold[index], settings)
        hybrid = torch.lerp(real, cf, soft)
        p_real, p_cf, p_hybrid = (predict_probabilities(model, x) for x in (real, cf, hybrid))
        images, titles = [], []
        for row, i in enumerate(chosen):
            s, tt = int(source[i]), int(target[i])
            ps = lambda p: f"p({class_names[s]})={p[row, s]:.2f}\np({class_names[tt]})={p[row, tt]:.2f}"  # noqa: E731
            images += [real[row].cpu().numpy(), cf[row].cpu().numpy(), heat(maps[index][row : row + 1].cpu().numpy())[0],
                       soft[row].expand(3, -1, -1).cpu().numpy(), hybrid[row].cpu().numpy()]
            titles += [f"real {class_names[s]}\n" + ps(p_real), "counterfactual\n" + ps(p_cf),
                       f"{method}\nscore {score[i]:.2f}", f"mask size\n{scores.optimal_mask_size[i].item():.3f}",
                       "hybrid\n" + ps(p_hybrid)]
        fig = image_grid(np.stack(images), titles, ncols=5, cell=1.5,
                         suptitle=f"{dataset}: {method}, into {class_names[int(t)]} (top {top_k} per source by score)")
        save_figure(fig, folder / f"into_{int(t)}_{class_names[int(t)]}.png")
        written += 1
    return written


def write_color_rule(frame: pd.DataFrame, class_names: list[str], dataset: str, out) -> None:
    """Colored MNIST's known answer: the color rule the classifier learned (plot data and picture)."""
    write_csv(out / "known_answer" / "color_rule.csv", color_rule_table(frame))
    plot_color_rule(frame, class_names, dataset, out / "known_answer.png")


def write_shortcut_overlap(methods: list[str], per_method: dict, control: dict, dataset: str, out) -> None:
    """Clever Hans's known answer: how well each method's optimal masks find the shortcut."""
    write_csv(out / "known_answer" / "shortcut_iou.csv", shortcut_table(methods, per_method, control))
    control_methods = control.get("methods", {})
    frame = pd.DataFrame([{"method": m, "shortcut_iou": per_method[m]["shortcut_iou"],
                           "shortcut_mass_fraction": per_method[m]["shortcut_mass_fraction"],
                           "control_shortcut_iou": control_methods.get(m, {}).get("shortcut_iou", NAN)}
                          for m in methods])
    plot_shortcut_overlap(frame, dataset, out / "known_answer.png")


# --------------------------------------------------------------------------------------------
def explain_every_method(model, pairs: Pairs, cfg: ExplainParams, settings: MaskSettings, grid: torch.Tensor,
                         generator: torch.Generator, truth: dict, dataset: str) -> tuple[dict, dict, dict]:
    """Every configured method on the pairs: (per-method details, method -> (maps, scores), arrays
    for the explanations file). ``truth`` may hold ``shortcut`` (selected, masks) and ``digit`` masks."""
    per_method, results, arrays = {}, {}, {}
    for method in cfg.methods:
        maps, scores, binary, soft = explain_pairs(method, model, pairs, cfg, settings, grid, generator,
                                                   progress=f"{method} sweep")
        entry = method_metrics(scores, pairs.target)
        if "shortcut" in truth:
            entry.update(shortcut_overlap(binary, soft, truth["shortcut"]))
        if "digit" in truth:
            _, share = mask_overlap(binary, soft, truth["digit"])
            entry["digit_mass_fraction"] = share.mean().item() if len(share) else NAN
            entry["background_mass_fraction"] = 1.0 - entry["digit_mass_fraction"]
        per_method[method] = entry
        results[method] = (maps, scores)
        arrays.update({f"{method}_score": scores.score.cpu().numpy(), f"{method}_curve": scores.curve.cpu().numpy(),
                       f"{method}_optimal_threshold": scores.optimal_threshold.cpu().numpy(),
                       f"{method}_optimal_mask_size": scores.optimal_mask_size.cpu().numpy(),
                       f"{method}_optimal_score_change": scores.optimal_score_change.cpu().numpy(),
                       f"{method}_optimal_predicted": scores.optimal_predicted.cpu().numpy(),
                       f"{method}_optimal_mask": to_uint8(soft).cpu().numpy()})
        print(f"[explain@{dataset}] {method}: median score {entry['median_score']:.3f}, "
              f"optimal mask {entry['mean_optimal_mask_size']:.3f}", file=sys.stderr)
    return per_method, results, arrays


def empty_method_entries(methods: list[str], truth: dict) -> dict:
    """Every per-method key with NaN values, for a run where no pair reaches its target."""
    keys = ("median_score", "iqr_score", "mean_optimal_mask_size", "reached_target_fraction")
    keys += ("shortcut_iou", "shortcut_mass_fraction") if "shortcut" in truth else ()
    keys += ("digit_mass_fraction", "background_mass_fraction") if "digit" in truth else ()
    return {method: dict.fromkeys(keys, NAN) for method in methods}


def score_row(method: str, scores) -> dict:
    q25, median, q75 = torch.quantile(scores.score.float().cpu(), torch.tensor([0.25, 0.5, 0.75])).tolist()
    return {"method": method, "median_score": median, "q25_score": q25, "q75_score": q75}


def main(argv: list[str] | None = None) -> None:
    with stage("explain", argv) as ctx:
        cfg = ctx.params.explain
        meta = load_meta(ctx.dataset)
        class_names = meta["class_names"]
        model = load_classifier(paths.classifier_path(ctx.dataset), ctx.device)
        test = load_prepared(ctx.dataset, "test", ctx.device)
        pairs = load_pairs(ctx.dataset, cfg, ctx.device, ctx.rng("pairs"))
        n_kept = len(pairs.target)
        settings = MaskSettings(cfg.n_thresholds, cfg.closing_size, cfg.blur_sigma, cfg.score_convention)
        grid = size_grid(cfg.n_grid, ctx.device)
        generator = ctx.generator("random-map")

        truth: dict = {}
        if ctx.dataset == "colored_mnist":
            truth["digit"] = to_uint8(pairs.real).amax(dim=1) > 0
        if "shortcut_alpha" in test:
            truth["shortcut"] = shortcut_truth(test, pairs)

        if n_kept:
            per_method, results, arrays = explain_every_method(model, pairs, cfg, settings, grid, generator, truth,
                                                               ctx.dataset)
        else:  # nothing to explain: keep every key, with null values, so downstream reads still work
            print(f"[explain@{ctx.dataset}] warning: no counterfactual reaches its target class; nothing to score",
                  file=sys.stderr)
            per_method, results, arrays = empty_method_entries(cfg.methods, truth), {}, {}
        best = best_discriminative(per_method)

        details: dict = {"n_pairs": pairs.n_pairs, "n_pairs_reaching_target": pairs.n_reaching_target, "n_pairs_kept": n_kept,
                         "counterfactual": cfg.counterfactual, "score_convention": cfg.score_convention,
                         "best_discriminative_method": best, "methods": per_method}
        control = None
        if "shortcut" in truth:
            control = (stamped_control(model, test, cfg, settings, grid, generator, ctx.rng("control-pairs"))
                       if cfg.control_pairs else {})
            details["n_pairs_into_shortcut_class"] = int(truth["shortcut"][0].sum())
            details["stamped_control"] = control
        if "digit" in truth:
            details["digit_pixel_fraction"] = truth["digit"].float().mean().item() if n_kept else NAN
            rule, color_frame = color_rule(model, test, class_names, cfg.batch_size)
            details["color_rule"] = rule
        details["per_class_pair"] = class_pair_details(pairs, results, class_names)
        metrics = headline_metrics(n_kept, per_method, best, control)

        out = paths.plots_dir(ctx.dataset, "explain")
        grid_host = grid.cpu().numpy()
        if n_kept:
            quartiles = {m: curve_quartiles(results[m][1].curve) for m in cfg.methods}
            score_frame = pd.DataFrame([score_row(m, results[m][1]) for m in cfg.methods])
        else:
            quartiles = {m: np.full((3, len(grid_host)), NAN) for m in cfg.methods}
            score_frame = pd.DataFrame([{"method": m, "median_score": NAN, "q25_score": NAN, "q75_score": NAN}
                                        for m in cfg.methods])
        write_csv(out / "curves.csv", curve_table(grid_host, quartiles))
        write_csv(out / "scores.csv", score_frame)
        plot_curves(grid_host, quartiles, ctx.dataset, out / "curves.png")
        plot_scores(score_frame, ctx.dataset, out / "scores.png")
        gallery_method = best or cfg.methods[0]
        if n_kept:
            maps, scores = results[gallery_method]
            save_gallery(model, pairs, gallery_method, maps, scores, settings, class_names, cfg.gallery_top_k,
                         out / "gallery", ctx.dataset)
        else:
            (out / "gallery").mkdir(parents=True, exist_ok=True)
        if "digit" in truth:
            write_color_rule(color_frame, class_names, ctx.dataset, out)
        elif control is not None:
            write_shortcut_overlap(cfg.methods, per_method, control, ctx.dataset, out)

        source, target = pairs.source.cpu().numpy(), pairs.target.cpu().numpy()
        save_arrays(explanations_dir(ctx.dataset) / "explanations.npz", image_index=pairs.image_index.cpu().numpy(),
                    source=source, target=target, methods=np.array(cfg.methods), size_grid=grid_host, **arrays)
        write_json(out / "details.json", details)
        write_json(paths.metrics_path(ctx.dataset, "explain"), metrics)
        ctx.timer.images = n_kept * len(cfg.methods) * (cfg.n_thresholds + 1)
        ranking = ", ".join(f"{m} {per_method[m]['median_score']:.3f}" for m in cfg.methods)
        extra = f"; shortcut IoU ({best}) {metrics['shortcut_iou']:.3f}" if control is not None and best else ""
        print(f"[explain@{ctx.dataset}] {n_kept}/{pairs.n_pairs} pairs kept; median scores: {ranking}{extra}", file=sys.stderr)


if __name__ == "__main__":
    main()
