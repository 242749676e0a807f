"""Training logs: a CSV of losses per logged step and a PNG plot of the curves.

The plot is drawn with OpenCV on a numpy canvas (matplotlib is not a dependency): one polyline per
loss column on a log10 y axis, with grid lines, tick labels and a legend.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import cv2
import numpy as np

COLUMNS = ("step", "lr", "loss", "loss_rgb", "loss_depth", "loss_rays", "grad_norm", "steps_per_s", "elapsed_s")
CURVES = ("loss", "loss_rgb", "loss_depth", "loss_rays")  # columns drawn in the PNG
COLOURS = ((0, 0, 0), (40, 40, 220), (40, 160, 40), (200, 90, 20))  # BGR per curve


class CsvLog:
    """Append-only CSV with a fixed header; reopening truncates rows past a resumed step."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = read_log(self.path) if self.path.exists() and resume_step is not None else []
        with open(self.path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            for r in rows:
                if r["step"] <= resume_step:  # a resumed run replays the steps after its checkpoint
                    w.writerow([_fmt(r[c]) for c in COLUMNS])

    def write(self, row: dict[str, float]) -> None:
        unknown = sorted(set(row) - set(COLUMNS))
        if unknown:
            raise ValueError(f"CsvLog.write: unknown column(s) {unknown}; expected {COLUMNS}")
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_fmt(row.get(c, math.nan)) for c in COLUMNS])


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6g}"


def read_log(path: str | os.PathLike) -> list[dict[str, float]]:
    """Rows of a CsvLog file as dicts of floats (empty cells are nan)."""
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) if v != "" else math.nan for k, v in r.items()} for r in csv.DictReader(f)]


def _nice_ticks(lo: float, hi: float) -> list[float]:
    """Decades and their 2x / 5x within [lo, hi] of log10 values, as log10 positions."""
    ticks = []
    for e in range(math.floor(lo), math.ceil(hi) + 1):
        for m in (1, 2, 5):
            t = e + math.log10(m)
            if lo <= t <= hi:
                ticks.append(t)
    return ticks


def plot_curves(rows: list[dict[str, float]], path: str | os.PathLike, size: tuple[int, int] = (900, 540),
                title: str = "training loss") -> np.ndarray:
    """Draw the loss columns of `rows` against step (log y) into a PNG at `path`; returns the image."""
    W, H = size
    img = np.full((H, W, 3), 255, np.uint8)
    left, right, top, bottom = 70, 20, 40, 50
    series = {c: [(r["step"], r[c]) for r in rows if r.get(c, math.nan) > 0] for c in CURVES}
    pts = [p for s in series.values() for p in s]
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (left, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    if pts:
        xs = [p[0] for p in pts]
        ys = [math.log10(p[1]) for p in pts]
        x0, x1 = min(xs), max(max(xs), min(xs) + 1)
        y0, y1 = min(ys), max(ys)
        pad = max(0.05, 0.05 * (y1 - y0))
        y0, y1 = y0 - pad, y1 + pad

        def px(step: float, logv: float) -> tuple[int, int]:
            return (int(left + (step - x0) / (x1 - x0) * (W - left - right)),
                    int(H - bottom - (logv - y0) / (y1 - y0) * (H - top - bottom)))

        for t in _nice_ticks(y0, y1):
            p = px(x0, t)
            cv2.line(img, (left, p[1]), (W - right, p[1]), (225, 225, 225), 1)
            cv2.putText(img, f"{10 ** t:.3g}", (5, p[1] + 4), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
        for i in range(6):
            step = x0 + (x1 - x0) * i / 5
            p = px(step, y0)
            cv2.line(img, (p[0], top), (p[0], H - bottom), (225, 225, 225), 1)
            cv2.putText(img, f"{step:.0f}", (p[0] - 12, H - bottom + 18), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
        for k, (name, s) in enumerate(series.items()):
            if s:
                poly = np.array([px(a, math.log10(b)) for a, b in s], np.int32)[:, None]  # (n, 1, 2)
                cv2.polylines(img, [poly], False, COLOURS[k], 2 if name == "loss" else 1, cv2.LINE_AA)
            y = top + 15 + 18 * k
            cv2.line(img, (W - 150, y - 4), (W - 125, y - 4), COLOURS[k], 2)
            cv2.putText(img, name, (W - 118, y), font, 0.45, COLOURS[k], 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (W - right, H - bottom), (0, 0, 0), 1)
    cv2.putText(img, "step", (W // 2, H - 12), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), img):
        raise ValueError(f"plot_curves: could not write {path}")
    return img
