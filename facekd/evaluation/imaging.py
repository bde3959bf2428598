"""Images as base64 strings, for the results JSON and the self-contained HTML report."""
from __future__ import annotations

import base64
import io

import numpy as np

MIME = {"png": "image/png", "jpeg": "image/jpeg"}


def encode_image(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> str:
    """Base64 text of a uint8 RGB ``HxWx3`` (or grey ``HxW``) image encoded as JPEG or PNG."""
    from PIL import Image

    if fmt not in MIME:
        raise ValueError(f"format must be one of {sorted(MIME)}, got {fmt!r}")
    buffer = io.BytesIO()
    options = {"quality": quality} if fmt == "jpeg" else {}
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format=fmt.upper(), **options)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str) -> np.ndarray:
    """Inverse of :func:`encode_image`: a uint8 RGB array."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB"))


def new_figure(width: float = 6.4, height: float = 4.8):
    """A matplotlib ``Figure`` on the Agg canvas (no pyplot, no global state, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def data_uri(payload: bytes | str, mime: str = "image/png") -> str:
    """``data:`` URI of raw bytes or of text already base64-encoded."""
    text = payload if isinstance(payload, str) else base64.b64encode(payload).decode("ascii")
    return f"data:{mime};base64,{text}"
