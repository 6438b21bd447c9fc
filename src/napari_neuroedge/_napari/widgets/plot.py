"""Live training curves of the Fine-tune widget, drawn with pyqtgraph (a maintained Qt plotting library).

:class:`TrainingPlot` is one pyqtgraph ``PlotWidget``: labelled axes, auto range, a legend, curves fed point by
point while the run goes (``add_point``), dashed horizontal reference lines (the parent model's held-out values,
``set_reference``) and a vertical marker at the kept checkpoint's step (``mark_kept``). Appending a point re-sets
the curve's data (a few hundred points: well under a millisecond), so the GUI thread stays free while training.
"""

from __future__ import annotations

import math
from typing import Any

from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget


def _pg() -> Any:
    import pyqtgraph as pg

    return pg


class TrainingPlot(QWidget):
    """Curves ``name -> [(step, value), ...]`` over training steps, with a title that names what it shows."""

    def __init__(self, title: str = "", y_label: str = "", log_y: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg = _pg()
        self.title, self.log_y = title, log_y
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.references: dict[str, float] = {}
        self.kept_step: float | None = None
        self.widget = pg.PlotWidget(background=None)
        self.widget.setMinimumWidth(120)  # the dock decides the width; a long title wraps (see _retitle)
        self.plot = self.widget.getPlotItem()
        self.plot.setLabel("bottom", "step")
        if y_label:
            self.plot.setLabel("left", y_label)
        for side in ("bottom", "left"):  # plain numbers, no "(x0.001)" rescaling of the axis
            self.plot.getAxis(side).enableAutoSIPrefix(False)
        self.plot.setLogMode(x=False, y=log_y)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMenuEnabled(False)
        self.widget.setMouseEnabled(x=False, y=False)  # a live view: it follows the data (auto range)
        self.legend = self.plot.addLegend(offset=(-4, 4), labelTextSize="8pt")
        self.plot.enableAutoRange()
        self._curves: dict[str, Any] = {}
        self._lines: dict[str, Any] = {}
        self._kept_line: Any = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.widget)
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def sizeHint(self) -> Any:  # noqa: N802 (Qt API)
        from qtpy.QtCore import QSize

        return QSize(300, 210)
        self._retitle()

    # ------------------------------------------------------------------ data
    def clear(self) -> None:
        """Forget every curve, reference line and mark (a new run, or another layer chosen)."""
        for item in [*self._curves.values(), *self._lines.values()] + ([self._kept_line] if self._kept_line else []):
            self.plot.removeItem(item)
        self.legend.clear()
        self.series.clear()
        self.references.clear()
        self._curves.clear()
        self._lines.clear()
        self._kept_line, self.kept_step = None, None
        self.plot.enableAutoRange()
        self._retitle()

    def add_point(self, name: str, x: float, y: float, color: str = "#4fc3f7") -> None:
        """Append (x, y) to curve ``name``; non-finite values (and non-positive ones on a log axis) are skipped."""
        if not (math.isfinite(x) and math.isfinite(y)) or (self.log_y and y <= 0):
            return
        pts = self.series.setdefault(name, [])
        pts.append((float(x), float(y)))
        curve = self._curves.get(name)
        if curve is None:
            pg = _pg()
            curve = self._curves[name] = self.plot.plot([], [], name=name, pen=pg.mkPen(color, width=1.6),
                                                        symbol="o", symbolSize=4, symbolBrush=color,
                                                        symbolPen=None)
        curve.setSymbol("o" if len(pts) < 40 else None)  # dots while sparse (validations), a line once dense
        curve.setData([p[0] for p in pts], [p[1] for p in pts])
        self._retitle()

    def set_reference(self, name: str, y: float, color: str = "#9e9e9e") -> None:
        """A dashed horizontal line at ``y``, listed in the legend as ``name`` (e.g. the parent's held-out F1)."""
        if not math.isfinite(y):
            return
        pg = _pg()
        from qtpy.QtCore import Qt

        old = self._lines.pop(name, None)
        if old is not None:
            self.plot.removeItem(old)
            self.legend.removeItem(name)
        self.references[name] = float(y)
        pen = pg.mkPen(color, width=1.2, style=Qt.PenStyle.DashLine)
        line = self._lines[name] = pg.InfiniteLine(pos=math.log10(y) if self.log_y else y, angle=0, pen=pen)
        self.plot.addItem(line)
        self.legend.addItem(pg.PlotDataItem([], [], pen=pen), name)

    def mark_kept(self, step: float, label: str = "kept") -> None:
        """A vertical line at the step whose checkpoint was kept, labelled in the plot."""
        pg = _pg()
        from qtpy.QtCore import Qt

        if self._kept_line is not None:
            self.plot.removeItem(self._kept_line)
        self.kept_step = float(step)
        self._kept_line = pg.InfiniteLine(pos=float(step), angle=90, label=label,
                                          pen=pg.mkPen("#ffd54f", width=1.4, style=Qt.PenStyle.DotLine),
                                          labelOpts={"position": 0.5, "color": "#ffd54f", "rotateAxis": (1, 0),
                                                     "anchors": [(0.5, 1), (0.5, 1)]})
        self.plot.addItem(self._kept_line)
        self._retitle()

    # ------------------------------------------------------------------ reading back (tests, titles)
    def legend_names(self) -> list[str]:
        return [label.text for _, label in self.legend.items]

    def y_view(self) -> tuple[float, float]:
        """The visible y range in data units (after auto range)."""
        lo, hi = self.plot.viewRange()[1]
        return (10 ** lo, 10 ** hi) if self.log_y else (lo, hi)

    def title_text(self) -> str:
        """The title: what the plot shows and the latest values, e.g. "held-out, last validation (step 40):
        F1 0.912, Rand err 0.081"."""
        values = [(name, pts[-1]) for name, pts in self.series.items() if pts]
        if not values:
            return self.title
        step = max(p[0] for _, p in values)
        text = ", ".join(f"{name} {p[1]:.3g}" for name, p in values)
        return f"{self.title} (step {step:g}): {text}"

    def _retitle(self) -> None:
        title, _, values = self.title_text().partition(": ")  # two lines: the dock is narrow
        self.plot.setTitle(f"{title}:<br>{values}" if values else title, size="9pt")
