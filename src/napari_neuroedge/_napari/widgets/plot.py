"""A tiny Qt-native line plot (QPainter), for the live loss / validation curves of the fine-tune widget.

No plotting library: drawing ~hundreds of points with QPainter costs well under a millisecond, so the GUI thread
stays free while training runs.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


class LinePlot(QWidget):
    """Curves ``name -> [(x, y), ...]`` sharing one x axis; y range from the data (or fixed via ``y_range``)."""

    def __init__(self, title: str = "", y_range: tuple[float, float] | None = None, parent: QWidget | None = None,
                 log_y: bool = False) -> None:
        super().__init__(parent)
        self.title = title
        self.y_range = y_range
        self.log_y = log_y
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.colors: dict[str, QColor] = {}
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Preferred)

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add_point(self, name: str, x: float, y: float, color: str = "#4fc3f7") -> None:
        """Append (x, y) to curve ``name`` and repaint; non-finite values are skipped."""
        if not (math.isfinite(x) and math.isfinite(y)):
            return
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.colors.setdefault(name, QColor(color))
        self.update()

    def _ty(self, y: float) -> float:
        return math.log10(max(y, 1e-8)) if self.log_y else y

    def _ranges(self) -> tuple[float, float, float, float] | None:
        """(x0, x1, y0, y1) of the data (y in plot units, i.e. log10 with ``log_y``), or None without points."""
        points = [pt for pts in self.series.values() for pt in pts]
        if not points:
            return None
        xs = [x for x, _ in points]
        x0, x1 = min(xs), max(xs)
        if self.y_range is not None:
            y0, y1 = self._ty(self.y_range[0]), self._ty(self.y_range[1])
        else:
            ys = [self._ty(y) for _, y in points]
            y0, y1 = min(ys), max(ys)
        if x1 - x0 < 1e-12:
            x0, x1 = x0 - 1, x1 + 1
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 0.5, y1 + 0.5
        return x0, x1, y0, y1

    def y_labels(self) -> list[str]:
        """The y-axis labels drawn (top, bottom)."""
        ranges = self._ranges()
        if ranges is None:
            return []
        fmt = (lambda v: f"{10 ** v:.3g}") if self.log_y else (lambda v: f"{v:.3g}")
        return [fmt(ranges[3]), fmt(ranges[2])]

    def left_margin(self) -> int:
        """Room for the widest y label (plus a gap), so the numbers are never cut at the left edge."""
        fm = QFontMetrics(self.font())
        widest = max((fm.horizontalAdvance(t) for t in self.y_labels() or ["0.0"]), default=0)
        return widest + 6

    def paintEvent(self, event: object) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.Antialiasing, True)
        fg = self.palette().windowText().color()
        w, h = self.width(), self.height()
        fm = QFontMetrics(self.font())
        left, right, top, bottom = self.left_margin(), 8, fm.height() + 2, fm.height() + 2
        plot = QRectF(left, top, max(w - left - right, 10), max(h - top - bottom, 10))
        p.setPen(QPen(fg, 1))
        # the title starts at the widget's left edge, in line with the labels of the form above
        p.drawText(QRectF(0, 0, w, top), Qt.AlignLeft | Qt.AlignVCenter, self._legend())
        p.setPen(QPen(QColor(fg.red(), fg.green(), fg.blue(), 90), 1))
        p.drawRect(plot)
        ranges = self._ranges()
        if ranges is None:
            p.end()
            return
        x0, x1, y0, y1 = ranges

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (self._ty(y) - y0) / (y1 - y0) * plot.height())

        for name, pts in self.series.items():
            pen = QPen(self.colors[name], 1.6)
            p.setPen(pen)
            if len(pts) == 1:
                p.drawEllipse(to_px(*pts[0]), 2.5, 2.5)
                continue
            path = QPainterPath(to_px(*pts[0]))
            for pt in pts[1:]:
                path.lineTo(to_px(*pt))
            p.drawPath(path)
        p.setPen(QPen(fg, 1))
        hi, lo = self.y_labels()
        fh = fm.height()
        p.drawText(QRectF(0, plot.top() - fh / 2, left - 4, fh), Qt.AlignRight | Qt.AlignVCenter, hi)
        p.drawText(QRectF(0, plot.bottom() - fh / 2, left - 4, fh), Qt.AlignRight | Qt.AlignVCenter, lo)
        p.drawText(QRectF(left, plot.bottom(), plot.width(), bottom), Qt.AlignLeft | Qt.AlignVCenter, f"{x0:g}")
        p.drawText(QRectF(left, plot.bottom(), plot.width(), bottom), Qt.AlignRight | Qt.AlignVCenter, f"{x1:g}")
        p.end()

    def _legend(self) -> str:
        """The title and each curve's latest value: "loss 0.0954", "validation: F1 0.91, Rand err 0.08"."""
        values = [(name, pts[-1][1]) for name, pts in self.series.items() if pts]
        if len(values) == 1 and values[0][0] == self.title:  # one curve named like the plot: say it once
            return f"{self.title} {values[0][1]:.3g}"
        text = ", ".join(f"{name} {v:.3g}" for name, v in values)
        if self.title:
            return f"{self.title}: {text}" if text else self.title
        return text
