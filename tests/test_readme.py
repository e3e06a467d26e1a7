"""The README's library example runs as written (docs that rot mislead first-time users)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(capsys) -> None:  # noqa: ANN001
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    example = next(b for b in blocks if "decode_panoptic" in b and "hle_loss" in b)
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)  # noqa: S102 - our own README
    # The last step decodes the stride-4 outputs into an image-sized id map.
    assert tuple(namespace["result"].panoptic.shape) == tuple(namespace["images"].shape[-2:])
    assert namespace["out"].embedding.shape[-1] == namespace["images"].shape[-1] // namespace["model"].decoder_stride
