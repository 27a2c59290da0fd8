"""The report's figures (report.py), drawn with matplotlib's Agg backend (no display needed).

Each figure function takes the runs (report.Run) and a PNG path, draws the runs that have the data,
and returns None when none has it. `draw_all` returns, per figure written, its file, title, the
run labels in its legend (read back from the drawn legend) and the runs it leaves out, with why.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import write_atomically

DPI = 120


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(runs) -> dict:
    """One colour per run, the same in every figure."""
    cmap = pyplot().get_cmap("tab10" if len(runs) <= 10 else "tab20")
    return {run.label: cmap(i % cmap.N) for i, run in enumerate(runs)}


def legend_labels(fig) -> list[str]:
    found = [ax.get_legend() for ax in fig.axes] + list(fig.legends)
    return [t.get_text() for legend in found if legend is not None for t in legend.get_texts()]


def save(fig, path: Path) -> list[str]:
    labels = legend_labels(fig)
    write_atomically(str(path), lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight"))  # whole or absent, as every report file
    pyplot().close(fig)
    return labels


def learning_curves(runs, path: Path):
    """Validation Jaccard and macro-F1 per epoch: threshold 0.5 solid, tuned thresholds dashed."""
    drawn = [r for r in runs if r.curves.get("val/jaccard")]
    if not drawn:
        return None
    plt, colour = pyplot(), colours(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for ax, score, name in zip(axes, ("jaccard", "f1_macro"), ("Jaccard", "macro-F1")):
        for run in drawn:
            fixed, tuned = run.curves.get(f"val/{score}", []), run.curves.get(f"val/tuned/{score}", [])
            if fixed:
                ax.plot(*zip(*fixed), marker="o", color=colour[run.label], label=run.label)
            if tuned:
                ax.plot(*zip(*tuned), marker=".", linestyle="--", color=colour[run.label])
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {name}")
        ax.set_title(f"Validation {name} (solid: threshold 0.5, dashed: tuned)", fontsize=10)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save(fig, path), drawn


def training_loss(runs, path: Path):
    """Training loss per logged step, with a moving average when there are many points."""
    drawn = [r for r in runs if r.loss]
    if not drawn:
        return None
    plt, colour = pyplot(), colours(runs)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for run in drawn:
        steps, loss = (np.array(v, dtype=float) for v in zip(*run.loss))
        window = max(1, len(loss) // 25)
        if window > 1:
            ax.plot(steps, loss, color=colour[run.label], alpha=0.25, linewidth=0.8)
            smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color=colour[run.label], label=run.label)
        else:
            ax.plot(steps, loss, color=colour[run.label], marker=".", label=run.label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train/loss (each run's own objective)")
    ax.set_title("Training loss per logged step (line: moving average when many points)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path), drawn


def label_f1(runs, path: Path):
    """Per-label validation F1 of each run's best epoch, as grouped bars: at the tuned thresholds when every run saved them, else at 0.5."""
    drawn = [r for r in runs if r.label_f1 or r.label_f1_tuned]
    if not drawn:
        return None
    plt, colour = pyplot(), colours(runs)
    tuned = all(r.label_f1_tuned for r in drawn)
    scores = {r.label: r.label_f1_tuned if tuned else r.label_f1 for r in drawn}
    drawn = [r for r in drawn if scores[r.label]]
    labels = list(dict.fromkeys(name for r in drawn for name in scores[r.label]))
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels) + 2), 4.5))
    width = 0.8 / len(drawn)
    x = np.arange(len(labels))
    for i, run in enumerate(drawn):
        values = [scores[run.label].get(name, np.nan) for name in labels]
        ax.bar(x - 0.4 + width * (i + 0.5), values, width, color=colour[run.label], label=run.label)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_ylabel(f"validation F1 ({'tuned thresholds' if tuned else 'threshold 0.5'})")
    ax.set_ylim(0, 1)
    ax.set_title("Per-label F1 of each run's best checkpoint", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncols=min(len(drawn), 4))
    return save(fig, path), drawn


def f1_at(probs: np.ndarray, target: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """F1 of one label at each threshold: probs, target (N,), thresholds (T,) -> (T,)."""
    pred = probs[None, :] >= thresholds[:, None]
    gold = target[None, :].astype(bool)
    tp = (pred & gold).sum(1)
    wrong = (pred ^ gold).sum(1)
    return 2 * tp / np.maximum(2 * tp + wrong, 1)


def threshold_curves(runs, path: Path):
    """Each label's validation F1 against its threshold (best epoch), the tuned threshold marked."""
    drawn = [r for r in runs if r.val_probs is not None]
    if not drawn:
        return None
    plt, colour = pyplot(), colours(runs)
    labels = list(dict.fromkeys(name for r in drawn for name in r.val_probs["label_names"]))
    cols = 4
    rows = (len(labels) + 1 + cols - 1) // cols  # one cell more, for the legend
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), sharex=True, sharey=True, squeeze=False)
    grid = np.linspace(0.01, 0.99, 99)
    for ax, name in zip(axes.flat, labels):
        for run in drawn:
            vp = run.val_probs
            if name not in vp["label_names"]:
                continue
            j = vp["label_names"].index(name)
            ax.plot(grid, f1_at(vp["probs"][:, j], vp["target"][:, j], grid), color=colour[run.label], linewidth=1.2)
            tuned = float(vp["thresholds"][j])
            ax.axvline(tuned, color=colour[run.label], linestyle=":", linewidth=1)
            ax.plot([tuned], f1_at(vp["probs"][:, j], vp["target"][:, j], np.array([tuned])), marker="o", color=colour[run.label])
        positives = (
            int(drawn[0].val_probs["target"][:, drawn[0].val_probs["label_names"].index(name)].sum()) if name in drawn[0].val_probs["label_names"] else None
        )
        ax.set_title(f"{name} ({positives} positives)" if positives is not None else name, fontsize=9)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[: len(labels)]):
        if i + cols >= len(labels):  # nothing drawn below it: it carries the x axis
            ax.set_xlabel("threshold")
            ax.tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel("F1")
    for ax in axes.flat[len(labels) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=colour[r.label], marker="o", label=r.label) for r in drawn]
    axes.flat[len(labels)].legend(handles=handles, loc="center", fontsize=8, title="dot: tuned threshold", title_fontsize=8)
    fig.suptitle("Validation F1 of each label against its threshold (best epoch)", fontsize=11)
    fig.tight_layout()
    return save(fig, path), drawn


def quality_vs_time(runs, path: Path):
    """Best validation Jaccard (tuned thresholds, else 0.5) against training wall time."""

    def quality(r):
        return r.row.get("val_tuned_jaccard") if r.row.get("val_tuned_jaccard") is not None else r.row.get("val_jaccard")

    drawn = [r for r in runs if r.row.get("train_time_s") is not None and quality(r) is not None]
    if not drawn:
        return None
    plt, colour = pyplot(), colours(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in drawn:
        minutes = run.row["train_time_s"] / 60
        ax.scatter([minutes], [quality(run)], s=60, color=colour[run.label], label=run.label, zorder=3)
        ax.annotate(run.label, (minutes, quality(run)), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("training wall time (minutes, validation included)")
    ax.set_ylabel("best validation Jaccard (tuned thresholds)")
    ax.set_title("Quality against training time", fontsize=10)
    ax.margins(x=0.25, y=0.15)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path), drawn


FIGURES = [
    ("val_curves.png", "Validation Jaccard and macro-F1 per epoch", learning_curves, "no val/jaccard in metrics.csv"),
    ("train_loss.png", "Training loss per step", training_loss, "no train/loss in metrics.csv"),
    ("label_f1.png", "Per-label validation F1 at the best epoch", label_f1, "no per-label F1 of the best epoch"),
    ("thresholds.png", "Each label's F1 against its threshold, tuned threshold marked", threshold_curves, "no checkpoints/val_probs.npz"),
    ("quality_vs_time.png", "Best validation Jaccard against training time", quality_vs_time, "no training time or validation score"),
]


def draw_all(runs, output: Path) -> list[dict]:
    """Every figure that at least one run has data for, as PNGs in `output`; their descriptions."""
    written = []
    for file, title, draw, reason in FIGURES:
        result = draw(runs, output / file)
        if result is None:
            continue
        legend, drawn = result
        left_out = {r.label: reason for r in runs if all(r is not d for d in drawn)}
        written.append({"file": file, "title": title, "legend": legend, "left_out": left_out})
    return written
