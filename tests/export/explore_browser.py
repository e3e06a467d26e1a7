"""Driving the distribution's Chromium with Playwright for the ``hle explore`` page.

Used by ``test_explore.py`` and, as a script, to draw the README's screenshot::

    python tests/export/explore_browser.py CHECKPOINT IMAGE OUT.png [ROW COL]

Playwright's own browser downloads are never used: the executable is ``$HLE_CHROMIUM``
or the first of ``chromium`` / ``chromium-browser`` on the PATH (Debian's ``chromium``
package).
"""
from __future__ import annotations

import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np


def find_chromium() -> str | None:
    """Path of a Chromium executable, or ``None``."""
    candidates = [os.environ.get("HLE_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def missing_browser_reason() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install -e '.[dev]')"
    if find_chromium() is None:
        return "no chromium executable found (apt-get install chromium, or set HLE_CHROMIUM); Playwright's browser downloads are not used"
    return None


@contextmanager
def open_page(html: Path, width: int = 1400, height: int = 900) -> Iterator[Any]:
    """A headless Chromium page showing ``html`` from disk, ready (``body[data-ready]``).

    Raises AssertionError when the page logs a JavaScript error.
    """
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        # --no-sandbox: Chromium refuses to start its sandbox as root (CI containers).
        browser = pw.chromium.launch(executable_path=find_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(html.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            assert not errors, errors
            yield page
            assert not errors, errors
        finally:
            browser.close()


def screen_point(page: Any, image: int, panel: str, y: float, x: float, size: tuple[int, int]) -> tuple[float, float]:
    """Screen position of input pixel ``(y, x)`` (centre: add 0.5) of one panel."""
    view = page.locator(f"section[data-index='{image}'] .view[data-panel='{panel}']")
    view.scroll_into_view_if_needed()  # the mouse only reaches what is in the viewport
    box = view.bounding_box()
    return box["x"] + x / size[1] * box["width"], box["y"] + y / size[0] * box["height"]


def click_map_pixel(page: Any, image: int, row: int, col: int, stride: int, size: tuple[int, int], panel: str = "input") -> None:
    """Click the centre of map pixel ``(row, col)`` (an ``stride x stride`` block of input pixels)."""
    page.mouse.click(*screen_point(page, image, panel, (row + 0.5) * stride, (col + 0.5) * stride, size))


def read_canvas(page: Any, image: int, panel: str) -> np.ndarray:
    """``[h, w, 3]`` uint8 pixels of a heatmap canvas as drawn."""
    data = page.evaluate(
        """([image, panel]) => {
            const c = document.querySelector(`section[data-index="${image}"] canvas[data-panel="${panel}"]`);
            const d = c.getContext("2d").getImageData(0, 0, c.width, c.height);
            return {w: c.width, h: c.height, px: Array.from(d.data)};
        }""",
        [image, panel],
    )
    return np.asarray(data["px"], dtype=np.uint8).reshape(data["h"], data["w"], 4)[..., :3]


_IMAGE_SIZE = """() => {
    const d = JSON.parse(document.getElementById("hle-data").textContent).images[0];
    return [d.height, d.width, d.stride];
}"""


def main(argv: list[str]) -> int:
    """Write a screenshot of the explorer for one image, with one pixel clicked."""
    import tempfile

    from hle.engine.inference import load_trained
    from hle.export.explore import write_explorer

    checkpoint, image, out = argv[:3]
    loaded = load_trained(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_explorer(loaded, [image], Path(tmp) / "explore.html", flip=loaded.config.eval.flip)
        with open_page(page_path, width=1100, height=700) as page:
            if len(argv) >= 5:
                size = tuple(int(v) for v in page.evaluate(_IMAGE_SIZE))
                click_map_pixel(page, 0, int(argv[3]), int(argv[4]), size[2], size[:2])
                page.mouse.move(*screen_point(page, 0, "panoptic", int(argv[3]) * size[2], int(argv[4]) * size[2], size[:2]))
            page.locator("section[data-index='0']").screenshot(path=out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
