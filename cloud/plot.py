"""A success-rate-over-time line chart as a PNG, drawn with Pillow alone.

The demo and ``python -m bench pixels`` leave this picture in their run
directory; matplotlib is not a dependency, and a chart of one series needs
only axes, ticks, a grid and a line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

LINE = (31, 119, 180)  # the curve; nothing else in the chart has this colour
TARGET = (214, 39, 40)
GRID = (225, 225, 225)
AXIS = (60, 60, 60)
TEXT = (30, 30, 30)
# Plot area inside the picture: left, top, right, bottom margins in pixels.
MARGINS = (64, 40, 24, 48)


def nice_step(span: float, ticks: int = 6) -> float:
    """A 1, 2 or 5 times a power of ten step that cuts ``span`` into about ``ticks`` parts."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def success_curve_png(
    path: Path | str,
    times_s: Sequence[float],
    rates: Sequence[float | None],
    title: str,
    *,
    target: float | None = None,
    size: tuple[int, int] = (800, 450),
) -> Path:
    """Write success rate (0..1) against time as a PNG line chart; None rates (no episodes yet) are left out.

    The x axis is in seconds, or minutes once the run is longer than 3 minutes;
    ``target`` draws a dashed horizontal line at that rate."""
    if len(times_s) != len(rates):
        raise ValueError(f"success_curve_png: {len(times_s)} times but {len(rates)} rates")
    width, height = size
    if width < 200 or height < 150:
        raise ValueError(f"success_curve_png: size {size} is too small (at least 200x150)")
    points = [(float(t), float(r)) for t, r in zip(times_s, rates) if r is not None and math.isfinite(float(r))]
    for t, r in points:
        if not (math.isfinite(t) and t >= 0 and 0.0 <= r <= 1.0):
            raise ValueError(f"success_curve_png: point (t={t}, rate={r}) outside t >= 0, 0 <= rate <= 1")

    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    left, top, right, bottom = MARGINS[0], MARGINS[1], width - MARGINS[2], height - MARGINS[3]
    t_max = max([t for t, _ in points] + [float(max(times_s, default=0.0)), 1.0])
    minutes = t_max > 180
    unit = 60.0 if minutes else 1.0
    x_span = t_max / unit
    step = nice_step(x_span)
    x_end = math.ceil(x_span / step) * step

    def px(t: float) -> float:
        return left + (t / unit) / x_end * (right - left)

    def py(r: float) -> float:
        return bottom - r * (bottom - top)

    # grid and tick labels
    for i in range(11):
        r = i / 10
        y = py(r)
        draw.line([(left, y), (right, y)], fill=GRID if i % 2 else (205, 205, 205))
        if i % 2 == 0:
            label = f"{r:.0%}"
            draw.text((left - 8, y), label, fill=TEXT, font=small, anchor="rm")
    n_x = int(round(x_end / step))
    for i in range(n_x + 1):
        v = i * step
        x = left + v / x_end * (right - left)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(x, bottom), (x, bottom + 4)], fill=AXIS)
        draw.text((x, bottom + 6), f"{v:g}", fill=TEXT, font=small, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS, width=1)
    draw.text(((left + right) / 2, height - 6), "time (min)" if minutes else "time (s)", fill=TEXT, font=small,
              anchor="md")
    draw.text((12, (top + bottom) / 2), "success", fill=TEXT, font=small, anchor="lm")
    draw.text(((left + right) / 2, 8), title, fill=TEXT, font=font, anchor="mt")

    if target is not None:
        y = py(min(max(target, 0.0), 1.0))
        for x0 in range(left, right, 12):
            draw.line([(x0, y), (min(x0 + 6, right), y)], fill=TARGET, width=1)
    if not points:
        draw.text(((left + right) / 2, (top + bottom) / 2), "no episodes finished yet", fill=TEXT, font=font,
                  anchor="mm")
    elif len(points) == 1:
        x, y = px(points[0][0]), py(points[0][1])
        draw.ellipse([(x - 3, y - 3), (x + 3, y + 3)], fill=LINE)
    else:
        draw.line([(px(t), py(r)) for t, r in points], fill=LINE, width=3, joint="curve")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out
