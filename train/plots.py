"""The report's figures from metrics.jsonl: LR (Fig. 1), valid accuracy (2), mAP (3), loss (4)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from digit_reader.runtime import atomic

FIGURES = {
    "fig1_lr.png": "Fig. 1: learning rate",
    "fig2_accuracy.png": "Fig. 2: validation accuracy",
    "fig3_map.png": "Fig. 3: validation mAP@[.5:.95]",
    "fig4_loss.png": "Fig. 4: training loss",
}


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    if len(y) < 2 * n or n < 2:
        return y
    return np.convolve(y, np.ones(n) / n, mode="valid")


def write_figures(run_dir: str | Path, records: list[dict]) -> list[Path]:
    """(Re)draw the four PNGs in `run_dir`, each written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("type") == "step"]
    epochs = [r for r in records if r.get("type") == "epoch"]
    s = np.array([r["step"] for r in steps], dtype=float)
    lr = np.array([r["lr"] for r in steps], dtype=float)
    loss = np.array([r["loss"] for r in steps], dtype=float)
    e = np.array([r["epoch"] for r in epochs], dtype=float)
    window = max(1, len(loss) // 100)
    series = {
        "fig1_lr.png": (s, lr, "step", "learning rate"),
        "fig2_accuracy.png": (e, np.array([r["accuracy"] for r in epochs]), "epoch", "accuracy"),
        "fig3_map.png": (e, np.array([r["map"] for r in epochs]), "epoch", "mAP"),
        "fig4_loss.png": (
            s[window - 1 :] if window > 1 else s,
            _smooth(loss, window),
            "step",
            "loss",
        ),
    }
    written = []
    for name, (x, y, xlabel, ylabel) in series.items():
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(x[: len(y)], y, marker="o" if xlabel == "epoch" else None, linewidth=1.2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(FIGURES[name])
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        path = Path(run_dir) / name
        atomic.write_bytes(path, buf.getvalue())
        written.append(path)
    return written
