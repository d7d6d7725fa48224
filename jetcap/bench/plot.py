"""A PNG of the benchmark drawn with Pillow: one panel of horizontal bars per figure (Python 3.6).

Panels: latency (per caption at batch 1, or the classifier at its typical T), peak RSS of a fresh
process, and cold start; one bar per configuration, labelled with its value and its ratio to
PyTorch eager.  Pillow's built-in font, no matplotlib.
"""
from jetcap.util.lazy import require

WIDTH = 960
LABEL_WIDTH = 290
ROW = 24
PANEL_GAP = 18
TITLE = 22
COLORS = {"pytorch": (204, 102, 51), "onnxruntime": (51, 119, 187), "tensorrt": (68, 153, 68)}
DEFAULT_COLOR = (120, 120, 120)


def panels_of(run):
    """``[(title, metric key, unit)]`` drawn for the run's family."""
    if run["family"] == "captioner":
        first = ("per-caption latency, batch 1 (p50, ms)", "caption_p50_ms_1", "ms")
    else:
        first = ("latency at T={}, batch 1 (p50, ms)".format(run["opt_T"]), "latency_ms_T{}".format(run["opt_T"]), "ms")
    return [first, ("peak RSS of a fresh process (MB)", "peak_rss_mb", "MB"),
            ("cold start: process start to first result (s)", "cold_start_s", "s")]


def _value_text(value, unit, times):
    text = ("{:.1f} {}" if value >= 10 else "{:.2f} {}").format(value, unit)
    return text + ("  (x{:.1f} vs PyTorch)".format(times) if times is not None else "")


def draw_report(run, path):
    """Write the PNG of ``run`` (a finished report) to ``path``."""
    Image = require("PIL.Image")
    ImageDraw = require("PIL.ImageDraw")
    ImageFont = require("PIL.ImageFont")
    configs = [c for c in run["configurations"] if "error" not in c]
    panels = panels_of(run)
    height = TITLE + 10 + len(panels) * (TITLE + len(configs) * ROW + PANEL_GAP) + 10
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((10, 6), "jetcap bench: {} ({}, {} threads)".format(run["bundle"], run["family"], run["threads"]),
              fill="black", font=font)
    top = TITLE + 10
    bar_left, bar_right = LABEL_WIDTH, WIDTH - 200
    for title, key, unit in panels:
        draw.text((10, top), title, fill="black", font=font)
        top += TITLE
        values = [c["figures"].get(key) for c in configs]
        largest = max([v for v in values if v] or [1.0])
        for entry, value in zip(configs, values):
            draw.text((10, top + 5), entry["label"], fill="black", font=font)
            if value:
                length = max(1, int((bar_right - bar_left) * value / largest))
                color = COLORS.get(entry["kind"].split("-")[0], DEFAULT_COLOR)
                draw.rectangle([bar_left, top + 3, bar_left + length, top + ROW - 5], fill=color)
                times = entry["vs_pytorch"].get(key) if entry["name"] != "pytorch" else None
                draw.text((bar_left + length + 6, top + 5), _value_text(value, unit, times), fill="black", font=font)
            else:
                draw.text((bar_left, top + 5), "not measured", fill="gray", font=font)
            top += ROW
        top += PANEL_GAP
    image.save(str(path), format="PNG")
    return str(path)
