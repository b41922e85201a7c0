"""Names on a scatter plot that cover no other name, marker, error bar, legend or leader line.

Written here because matplotlib does not place labels, and adjustText's force layout moves every label and is
not repeatable across versions; a handful of candidate boxes is enough for a study's dozen names."""

from __future__ import annotations

import math

_LEADER = {"arrowstyle": "-", "color": "0.6", "lw": 0.6, "shrinkA": 0, "shrinkB": 3}


def _segment_hits(a: tuple[float, float], b: tuple[float, float], box) -> bool:
    """Whether the straight line from a to b (canvas pixels) passes through `box`, tested at 32 points along it:
    fine enough for 7-point text and lines a few dozen points long."""
    return any(box.contains(a[0] + (b[0] - a[0]) * t / 32, a[1] + (b[1] - a[1]) * t / 32) for t in range(1, 32))


def place_labels(ax, named: list[tuple[float, float, str]], marks: list[tuple[float, float, float]]) -> list:
    """Name points so that no name covers another name, a marker or its error bar, the legend, or a line drawn to
    another name, and none leaves the axes. Each name, in the order given (the most important first), takes the first
    free place among a few around its point (right, then left, level with it, then stepping up and down), or where
    none is free the one that covers least. A name moved
    off its row gets a thin line to its point, which must not cross another name, and crosses another marker only
    where no place avoids it (in a column of close points one may have to): such a line reads as naming that point.
    `marks` are every point drawn, named or not: (x, y, error bar half-height).
    Written here because matplotlib does not place labels, and adjustText's force layout moves every label and is
    not repeatable across versions; a handful of candidate boxes is enough for a study's dozen names."""
    from matplotlib import rcParams
    from matplotlib.text import Text as MplText  # report.Text is a block of the report
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_px = ax.transData.transform
    steps = [0] + [sign * 9 * k for k in range(1, 11) for sign in (1, -1)]  # up to 90 points off the row
    candidates = [(dx, dy, ha) for dy in steps for dx, ha in ((6, "left"), (-6, "right"))]
    half = renderer.points_to_pixels(rcParams["lines.markersize"] / 2 + 0.5)  # a marker's half width, in pixels
    mark_boxes = []  # (the point's pixel position, the box of its marker and error bar)
    for x, y, err in marks:
        (px, py), (_, low), (_, high) = to_px([(x, y), (x, y - err), (x, y + err)])
        mark_boxes.append(((px, py), Bbox([[px - half, min(py - half, low)], [px + half, max(py + half, high)]])))
    fixed = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    placed, boxes, lines = [], [], []
    for x, y, name in named:
        anchor = tuple(to_px((x, y)))
        others = [b for at, b in mark_boxes if math.dist(at, anchor) > 0.5]  # every marker but its own
        best = None
        for dx, dy, ha in candidates:
            if best is not None and best[0][0] == 0 and abs(dy) > best[4]:
                break  # a free place was found nearer: the others as near were tried for a line clear of markers
            relpos = (0, 0.5) if ha == "left" else (1, 0.5)  # the line meets the name at its near end
            text = ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7, ha=ha,
                               va="center", arrowprops={**_LEADER, "relpos": relpos} if dy else None)
            text.update_positions(renderer)  # the offset is turned into a place on the canvas here
            box = MplText.get_window_extent(text, renderer).padded(1.5)  # the words alone, not the line
            end = (box.x0 if ha == "left" else box.x1, (box.y0 + box.y1) / 2) if dy else anchor
            # what this place would cover; covering a name is worse than covering a marker
            covers = (5 * (not (frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1)))
                      + 3 * sum(box.overlaps(b) for b in boxes + fixed) + sum(box.overlaps(b) for b in others)
                      + 2 * sum(_segment_hits(a, b, box) for a, b in lines)
                      + 2 * sum(_segment_hits(anchor, end, b) for b in boxes + fixed) * bool(dy))
            # then, among free places as near to the point: a line through another marker reads as naming that point
            clash = (covers, sum(_segment_hits(anchor, end, b) for b in others) * bool(dy))
            if best is None or clash < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clash, text, box, end, abs(dy))
            else:
                text.remove()
            if clash == (0, 0):
                break
        # crowded beyond every candidate: the place that covers least, so the names stay as readable as they can
        _, text, box, end, _ = best
        placed.append(text)
        boxes.append(box)
        if end != anchor:
            lines.append((anchor, end))
    return placed


