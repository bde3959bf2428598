"""Check that an HTML report renders in a real headless Chromium, images included.

Two Chromium runs on a copy of the page:

1. ``--screenshot``: the PNG must not be blank (grey-level standard deviation above a floor);
2. ``--dump-dom`` after a small script, appended to the copy, has written into the DOM how
   many ``<img>`` elements finished loading with ``naturalWidth > 0``.

Used by ``tests/test_report.py`` and ``facekd report --check-render``.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio")

_PROBE = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.createElement('pre');
  out.id = 'facekd-render-probe';
  out.textContent = 'IMAGES ' + imgs.length + ' LOADED ' + (imgs.length - broken.length) +
                    ' BROKEN ' + JSON.stringify(broken.map(function (i) { return i.alt; }));
  document.body.appendChild(out);
});
</script>
"""
_PROBE_RESULT = re.compile(r"IMAGES (\d+) LOADED (\d+) BROKEN (\[.*?\])")


@dataclass
class RenderCheck:
    """What Chromium made of the page."""
    screenshot: Path
    pixel_std: float
    images_total: int
    images_loaded: int
    broken: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Non-blank screenshot and every image loaded."""
        return self.pixel_std > 1.0 and self.images_total == self.images_loaded

    def __str__(self) -> str:
        return (f"screenshot {self.screenshot} (pixel std {self.pixel_std:.1f}); "
                f"{self.images_loaded}/{self.images_total} images loaded"
                + (f"; broken: {self.broken}" if self.broken else ""))


def find_chromium() -> Optional[str]:
    """Path of a Chromium/Chrome executable, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _run(chromium: str, args: Sequence[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return result


def check_render(html_path: Union[str, Path], screenshot: Optional[Union[str, Path]] = None,
                 chromium: Optional[str] = None, window: str = "1200,2000",
                 timeout: float = 90.0) -> RenderCheck:
    """Render ``html_path`` headless; return the screenshot's contrast and the image load counts.

    Args:
        html_path: the page to check (not modified: a probed copy is rendered).
        screenshot: where to save the screenshot PNG (default: next to the page, ``<name>.png``).
        chromium: the browser executable (default: :func:`find_chromium`).
        window: ``width,height`` of the headless window.
        timeout: seconds allowed for each Chromium run.
    """
    from PIL import Image

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium executable found (install the 'chromium' package)")
    html_path = Path(html_path).resolve()
    screenshot = Path(screenshot) if screenshot else html_path.with_suffix(".png")
    with tempfile.TemporaryDirectory(prefix="facekd-render-") as tmp:
        tmp_dir = Path(tmp)
        _run(chromium, [f"--screenshot={screenshot.resolve()}", f"--window-size={window}",
                        html_path.as_uri()], tmp_dir / "profile-shot", timeout)
        probed = tmp_dir / html_path.name
        page = html_path.read_text(encoding="utf-8")
        probed.write_text(page.replace("</body>", _PROBE + "</body>") if "</body>" in page else page + _PROBE,
                          encoding="utf-8")
        dom = _run(chromium, ["--dump-dom", "--virtual-time-budget=5000", probed.as_uri()],
                   tmp_dir / "profile-dom", timeout).stdout
    grey = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    match = _PROBE_RESULT.search(dom)
    if match is None:
        raise RuntimeError(f"{html_path}: the render probe did not run (no result in the dumped DOM)")
    return RenderCheck(screenshot, float(grey.std()), int(match.group(1)), int(match.group(2)),
                       json.loads(match.group(3).replace("&quot;", '"')))
