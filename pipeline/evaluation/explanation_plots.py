"""Figures of discriminative attribution: median curves and scores per method, overlap with a planted
shortcut, the color rule a classifier learned, and galleries of (real, counterfactual, map, mask, hybrid)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pipeline.attribution.discriminative import MaskSettings, optimal_masks
from pipeline.evaluation.explanations import Pairs
from pipeline.models.inference import predict_probabilities
from pipeline.storage import save_figure


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
    """Per method, the IoU of its optimal masks with the shortcut on GAN pairs and on the distractor control
    (:func:`~pipeline.evaluation.explanations.shortcut_table`), each bar beside its chance level (a black tick) with
    the lift's 95 % interval placed on the bar; a figure not judged is left empty and says so."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(frame["method"]))
    pair_sets = list(dict.fromkeys(frame["pair_set"]))
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(methods) * len(pair_sets) + 1.8))
    height = 0.8 / len(pair_sets)
    palette = {pair_set: color for pair_set, color in zip(pair_sets, ("tab:blue", "tab:gray", "tab:orange"))}
    for j, pair_set in enumerate(pair_sets):
        rows = frame[frame["pair_set"] == pair_set].set_index("method").loc[methods]
        y = np.arange(len(methods)) + (j - (len(pair_sets) - 1) / 2) * height
        score, chance = rows["shortcut_iou"].to_numpy(float), rows["chance"].to_numpy(float)
        low, high = chance + rows["lift_low"].to_numpy(float), chance + rows["lift_high"].to_numpy(float)
        ax.barh(y, np.nan_to_num(score), height=height, color=palette[pair_set], label=f"IoU on {pair_set}")
        judged = np.isfinite(score) & np.isfinite(low)
        ax.errorbar(score[judged], y[judged], xerr=[np.clip(score - low, 0, None)[judged], np.clip(high - score, 0, None)[judged]],
                    fmt="none", ecolor="black", capsize=2, linewidth=0.8)
        ax.scatter(chance[judged], y[judged], marker="|", s=120, color="black", zorder=3,
                   label="chance level" if j == 0 else None)
        for yy in y[~judged]:
            ax.text(0.01, yy, "not judged", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(methods)), methods)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU of the optimal mask with the shortcut (bar: lift's 95 % interval; tick: chance)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)  # below the bars, never over them
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

