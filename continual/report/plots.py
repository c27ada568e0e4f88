"""PNG plots of a run, from its logs: accuracy curve, accuracy matrix, training curves.

Figures are built with ``matplotlib.figure.Figure`` and its Agg canvas, never
through pyplot: no display, no global figure state, safe in a training job.
Each file is written under a temporary name and renamed, so a reader never
sees half a PNG while the run rewrites them after every task.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from continual.report.records import EpochRecord, TaskResult
from continual.runtime.files import atomic_write

ACCURACY_CURVE = "accuracy_curve.png"
ACCURACY_MATRIX = "accuracy_matrix.png"
TRAINING_CURVES = "training_curves.png"
LOSS_TERMS = ("total", "classification", "kd", "div")


def save_figure(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)  # attaches the Agg canvas: rendering needs no display
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))


def accuracy_curve(results: list[TaskResult], label: str = "DyTox") -> Figure:
    """Top-1 accuracy on all seen classes vs number of classes seen, the paper's figure style.

    The legend carries the average incremental accuracy, as the paper's figures do.
    """
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    classes = [result.classes_seen for result in results]
    top1 = [result.acc1 for result in results]
    axes.plot(classes, top1, marker="o", linewidth=2, label=f"{label} (Avg {results[-1].avg_acc:.2f})")
    axes.set_xlabel("Number of classes")
    axes.set_ylabel("Top-1 accuracy (%)")
    axes.set_xticks(classes)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    figure.tight_layout()
    return figure


def accuracy_matrix(matrix: Sequence[Sequence[float | None]]) -> Figure:
    """Heatmap of a[i][j] (accuracy on task j's classes after learning task i), each cell annotated."""
    size = len(matrix)
    grid = [[math.nan] * size for _ in range(size)]  # above the diagonal: tasks not seen yet
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            grid[i][j] = math.nan if value is None else value
    figure = Figure(figsize=(6, 5))
    axes = figure.add_subplot()
    image = axes.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    for i in range(size):
        for j in range(i + 1):
            value = grid[i][j]
            text = "-" if math.isnan(value) else f"{value:.1f}"
            axes.text(j, i, text, ha="center", va="center", fontsize=8,
                      color="black" if not math.isnan(value) and value > 60 else "white")
    axes.set_xticks(range(size))
    axes.set_yticks(range(size))
    axes.set_xlabel("Accuracy on the classes of task j")
    axes.set_ylabel("After learning task i")
    figure.colorbar(image, ax=axes, label="Top-1 accuracy (%)")
    figure.tight_layout()
    return figure


def training_curves(epochs: list[EpochRecord]) -> Figure:
    """Loss terms and learning rate per epoch, over the whole run (epochs.jsonl in order).

    The x axis counts epochs across tasks and phases; dashed lines mark where a
    task starts and finetuning epochs are shaded.
    """
    figure = Figure(figsize=(8, 6))
    losses, lrs = figure.subplots(2, 1, sharex=True)
    steps = list(range(len(epochs)))
    for term in LOSS_TERMS:
        if any(term in record.losses for record in epochs):
            losses.plot(steps, [record.losses.get(term, math.nan) for record in epochs], marker=".", label=term)
    lrs.plot(steps, [record.lr for record in epochs], marker=".", color="tab:gray")
    for index, record in enumerate(epochs):
        if record.phase == "finetune":
            for axes in (losses, lrs):
                axes.axvspan(index - 0.5, index + 0.5, color="tab:orange", alpha=0.15, linewidth=0)
        if index > 0 and record.task != epochs[index - 1].task:
            for axes in (losses, lrs):
                axes.axvline(index - 0.5, color="black", linestyle="--", linewidth=0.8)
    losses.set_ylabel("loss (epoch mean)")
    losses.set_title("Training curves (shaded: finetuning; dashed: new task)")
    losses.legend(loc="upper right")
    losses.grid(alpha=0.3)
    lrs.set_ylabel("learning rate")
    lrs.set_yscale("log")
    lrs.set_xlabel("epoch (all tasks and phases)")
    lrs.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def write_plots(run_dir: Path, results: list[TaskResult], epochs: list[EpochRecord]) -> None:
    """(Re)write the run's PNGs from its task results and epoch records."""
    figures = {
        ACCURACY_CURVE: accuracy_curve(results),
        ACCURACY_MATRIX: accuracy_matrix([result.acc_per_task for result in results]),
    }
    if epochs:
        figures[TRAINING_CURVES] = training_curves(epochs)
    for name, figure in figures.items():
        save_figure(figure, run_dir / name)
