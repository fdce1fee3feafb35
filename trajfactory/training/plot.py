"""The loss curve of a training run as a small PNG, drawn with Pillow (no plotting library needed)."""

from __future__ import annotations

from pathlib import Path

WIDTH, HEIGHT, MARGIN = 640, 400, 56


def loss_curve_png(points: list[tuple[int, float]], path: str | Path, title: str = "training loss") -> Path:
    """Draw loss against optimizer step (axes with min/max ticks, one polyline, a dot per step) into `path`."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = MARGIN, MARGIN // 2 + 10, WIDTH - MARGIN // 2, HEIGHT - MARGIN
    draw.text((left, 8), title, fill="black")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black", width=1)
    draw.text((right - 30, bottom + 22), "step", fill="black")
    if points:
        steps = [s for s, _ in points]
        losses = [v for _, v in points]
        s0, s1 = min(steps), max(steps)
        lo, hi = min(losses), max(losses)
        if hi == lo:  # a flat curve still gets a visible band
            lo, hi = lo - 0.5, hi + 0.5

        def xy(step: int, loss: float) -> tuple[float, float]:
            x = left + (right - left) * ((step - s0) / (s1 - s0) if s1 > s0 else 0.5)
            return x, bottom - (bottom - top) * (loss - lo) / (hi - lo)

        xys = [xy(s, v) for s, v in points]
        if len(xys) > 1:
            draw.line(xys, fill=(31, 119, 180), width=2)
        for x, y in xys:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(31, 119, 180))
        draw.text((4, top - 6), f"{hi:.3g}", fill="black")
        draw.text((4, bottom - 6), f"{lo:.3g}", fill="black")
        draw.text((left - 4, bottom + 6), str(s0), fill="black")
        draw.text((right - 12, bottom + 6), str(s1), fill="black")
    else:
        draw.text((left + 10, (top + bottom) // 2), "no steps logged", fill="black")
    out = Path(path)
    img.save(out, format="PNG")
    return out
