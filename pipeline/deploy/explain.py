"""Where the evidence for a class lies in an image: occlusion sensitivity on a coarse grid (Zeiler and Fergus,
2014), drawn over the image.

Each cell of a ``GRID`` x ``GRID`` grid over the network's input is covered in
turn with the image's mean colour, and the drop of the class's probability is
that cell's evidence. It needs forward passes only, so it explains every kind
of model the same way, a bundle on ONNX Runtime (the CPU's default engine,
which has no gradients), a fine-tuned network, an exported ONNX or LiteRT
model, where Grad-CAM would need the Keras graph and a differentiable head.
The price is ``GRID``\\ :sup:`2` + 1 passes per image (50 at the default 7).
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import UserError

GRID = 7  # cells per side: 32 px at 224, about an object part's size
ALPHA = 0.6  # the heat's opacity where it is strongest


def occlusion(probabilities: Callable[[np.ndarray, int], np.ndarray], pixels: np.ndarray, target: int,
              batch_size: int = 32, grid: int = GRID) -> np.ndarray:
    """(grid, grid): how much the probability of class ``target`` drops when each cell of ``pixels`` (one decoded
    image, (size, size, 3) uint8) is covered; ``probabilities`` as a predictor's (a padded batch, images in it)."""
    size = pixels.shape[0]
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    fill = pixels.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    covered = np.repeat(pixels[None], grid * grid + 1, axis=0)
    for k in range(grid * grid):
        i, j = divmod(k, grid)
        covered[1 + k, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = fill
    scores = []
    for start in range(0, len(covered), batch_size):
        chunk = covered[start:start + batch_size]
        padded = np.zeros((batch_size, *pixels.shape), np.uint8)
        padded[:len(chunk)] = chunk
        scores.append(np.asarray(probabilities(padded, len(chunk)))[:len(chunk), target])
    scores = np.concatenate(scores)
    return (scores[0] - scores[1:]).reshape(grid, grid)


def overlay(pixels: np.ndarray, heat: np.ndarray) -> Image.Image:
    """The image with the positive evidence of ``heat`` drawn over it (inferno colours, opaque where strongest)."""
    try:
        import matplotlib  # the pipeline's; an exported model's runtime alone lacks it
    except ImportError:
        raise UserError("drawing heatmaps needs matplotlib: pip install matplotlib", param="explain") from None
    size = pixels.shape[0]
    positive = np.clip(heat, 0, None)
    scaled = positive / positive.max() if positive.max() > 0 else positive
    smooth = np.asarray(Image.fromarray(scaled.astype(np.float32), "F").resize((size, size), Image.BILINEAR))
    colour = matplotlib.colormaps["inferno"](smooth)[..., :3] * 255
    weight = ALPHA * smooth[..., None]
    return Image.fromarray(np.clip(pixels * (1 - weight) + colour * weight, 0, 255).astype(np.uint8))


def explained(pixels: np.ndarray, heat: np.ndarray, name: str) -> Image.Image:
    """The heatmap as a person reads it: the image and its overlay side by side (the cells outlined), a colour
    scale from no drop to the largest, and lines naming the class or label whose evidence it shows."""
    import matplotlib  # overlay() has checked it is there
    from PIL import ImageDraw, ImageFont

    size, bar, margin, line = pixels.shape[0], 12, 8, 16
    font = ImageFont.load_default(size=12)
    width = 2 * size + 3 * margin + bar + 40
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    above = _wrapped(f"where the evidence for {name} lies", font, width - 2 * margin, measure)
    below = _wrapped(f"the brighter a cell, the more the probability of {name} fell when it was covered", font,
                     width - 2 * margin, measure)
    top = margin + line * len(above)
    canvas = Image.new("RGB", (width, top + size + margin + line * len(below) + margin), "white")
    canvas.paste(Image.fromarray(pixels), (margin, top))
    canvas.paste(overlay(pixels, heat), (2 * margin + size, top))
    draw = ImageDraw.Draw(canvas)
    for edge in np.linspace(0, size, heat.shape[0] + 1).round().astype(int)[1:-1]:  # the occluded cells
        draw.line([(2 * margin + size + edge, top), (2 * margin + size + edge, top + size - 1)], fill="white")
        draw.line([(2 * margin + size, top + edge), (2 * margin + 2 * size - 1, top + edge)], fill="white")
    left = 3 * margin + 2 * size
    ramp = matplotlib.colormaps["inferno"](np.linspace(1, 0, size))[:, :3] * 255
    canvas.paste(Image.fromarray(np.repeat(ramp[:, None], bar, axis=1).astype(np.uint8)), (left, top))
    draw.text((left + bar + 3, top), f"-{float(np.clip(heat, 0, None).max()):.2f}", fill="black", font=font)
    draw.text((left + bar + 3, top + size - 12), "0", fill="black", font=font)
    for k, text in enumerate(above):
        draw.text((margin, margin // 2 + k * line), text, fill="black", font=font)
    for k, text in enumerate(below):
        draw.text((margin, top + size + margin // 2 + k * line), text, fill="black", font=font)
    return canvas


def _wrapped(text: str, font, width: int, draw) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels (a word longer than that on a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def encoded(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()
