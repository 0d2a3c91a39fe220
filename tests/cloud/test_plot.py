"""The success-curve PNG (Pillow only): a real PNG whose curve sits where the data says."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cloud.plot import LINE, nice_step, success_curve_png


def _curve(path) -> np.ndarray:
    """(x, y) of every pixel in the curve's colour."""
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    mask = (np.abs(img - np.array(LINE)).sum(-1) < 30)
    ys, xs = np.nonzero(mask)
    return np.stack([xs, ys], 1)


def test_png_of_the_expected_size(tmp_path):
    out = success_curve_png(tmp_path / "sub" / "success.png", [0, 30, 60], [0.0, 0.5, 0.9], "pixels demo")
    assert out == tmp_path / "sub" / "success.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (800, 450)
    small = success_curve_png(tmp_path / "s.png", [0, 1], [0.2, 0.3], "t", size=(320, 200))
    with Image.open(small) as img:
        assert img.size == (320, 200)


def test_curve_goes_where_the_data_says(tmp_path):
    t = np.linspace(0, 600, 61)
    rates = np.clip(t / 600, 0, 1)  # 0 at the start, 1.0 at the end
    path = success_curve_png(tmp_path / "up.png", t.tolist(), rates.tolist(), "rising", target=0.8)
    pts = _curve(path)
    assert len(pts) > 200
    h, w = 450, 800
    first, last = pts[pts[:, 0] == pts[:, 0].min()], pts[pts[:, 0] == pts[:, 0].max()]
    assert last[:, 1].mean() < 0.2 * h, "a rate of 1.0 at the end must plot near the top"
    assert first[:, 1].mean() > 0.8 * h, "a rate of 0 at the start must plot near the bottom"
    assert pts[:, 0].min() < 0.15 * w and pts[:, 0].max() > 0.9 * w, "the curve spans the time axis"
    # rising data: the curve climbs from left to right
    cols = np.unique(pts[:, 0])
    mean_y = np.array([pts[pts[:, 0] == c, 1].mean() for c in cols])
    assert np.corrcoef(cols, mean_y)[0, 1] < -0.99


def test_flat_curve_and_gaps(tmp_path):
    half = success_curve_png(tmp_path / "half.png", [0, 10, 20, 30, 40], [None, 0.5, 0.5, None, 0.5], "flat")
    pts = _curve(half)
    assert pts[:, 1].max() - pts[:, 1].min() <= 4, "a constant rate is a horizontal line"
    full = success_curve_png(tmp_path / "full.png", [0, 10, 20], [1.0, 1.0, 1.0], "flat")
    zero = success_curve_png(tmp_path / "zero.png", [0, 10, 20], [0.0, 0.0, 0.0], "flat")
    y_full, y_half, y_zero = (_curve(p)[:, 1].mean() for p in (full, half, zero))
    assert y_full < y_half < y_zero
    assert abs((y_full + y_zero) / 2 - y_half) <= 2, "the rate axis is linear"
    # nothing to plot yet: still a chart, no curve
    empty = success_curve_png(tmp_path / "empty.png", [0, 5], [None, None], "waiting")
    assert len(_curve(empty)) == 0
    with Image.open(empty) as img:
        assert img.size == (800, 450)


def test_minutes_axis_for_long_runs(tmp_path):
    long = success_curve_png(tmp_path / "long.png", [0, 1800], [0.0, 1.0], "30 min")
    short = success_curve_png(tmp_path / "short.png", [0, 60], [0.0, 1.0], "1 min")
    # both spans end at the right edge of the plot, whatever the unit
    assert abs(_curve(long)[:, 0].max() - _curve(short)[:, 0].max()) <= 3


@pytest.mark.parametrize(
    "times, rates, message",
    [([0, 1], [0.5], "2 times but 1 rates"), ([0, 1], [0.5, 1.5], "rate=1.5"), ([-1, 1], [0.1, 0.2], "t=-1")],
)
def test_bad_input_is_refused(tmp_path, times, rates, message):
    with pytest.raises(ValueError, match=message):
        success_curve_png(tmp_path / "x.png", times, rates, "bad")
    assert not (tmp_path / "x.png").exists()


def test_nice_step():
    assert nice_step(10) == 2
    assert nice_step(600) == 100
    assert nice_step(30) == 5
    assert nice_step(0) == 1.0
