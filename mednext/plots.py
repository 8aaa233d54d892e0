"""Figures saved to run directories and logged to W&B (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mednext.files import atomic_path


def _middle_slice(volume: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    # For 3D, the axial slice with the most foreground in the reference label shows the most.
    if volume.ndim == 2:
        return volume, label, -1
    counts = (label > 0).reshape(-1, label.shape[-1]).sum(axis=0)
    index = int(counts.argmax()) if counts.any() else label.shape[-1] // 2
    return volume[..., index], label[..., index], index


def overlay_figure(
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    num_classes: int,
    title: str = "",
) -> np.ndarray:
    """An RGB picture ``(H, W, 3)`` uint8: the image, the reference and the prediction overlaid
    side by side, on the slice with the most reference foreground (3D) or the image (2D)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image2d, label2d, index = _middle_slice(image, label)
    prediction2d = prediction[..., index] if prediction.ndim == 3 else prediction
    colours = plt.get_cmap("tab20", max(num_classes, 2))
    figure, axes = plt.subplots(1, 3, figsize=(9, 3.4), dpi=100)
    panels = (("image", None), ("reference", label2d), ("prediction", prediction2d))
    for axis, (name, mask) in zip(axes, panels, strict=True):
        axis.imshow(image2d.T, cmap="gray", origin="lower")
        if mask is not None:
            masked = np.ma.masked_where(mask.T == 0, mask.T)
            axis.imshow(
                masked,
                cmap=colours,
                vmin=0,
                vmax=max(num_classes - 1, 1),
                alpha=0.5,
                origin="lower",
                interpolation="nearest",
            )
        axis.set_title(name)
        axis.axis("off")
    if title:
        figure.suptitle(title + (f" — slice {index}" if index >= 0 else ""))
    return figure_to_array(figure)


def figure_to_array(figure) -> np.ndarray:
    """A matplotlib figure as an RGB array ``(H, W, 3)`` uint8; the figure is closed."""
    import matplotlib.pyplot as plt

    if figure.get_layout_engine() is None:
        figure.tight_layout()
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return picture


def save_png(picture: np.ndarray, path: Path) -> None:
    """Write an RGB array as PNG (atomically)."""
    import matplotlib.image

    with atomic_path(path) as temporary:
        matplotlib.image.imsave(temporary, picture, format="png")
