"""Taking a trained network out of PyTorch: an ONNX file and a self-contained HTML explorer.

Sub-modules: :mod:`~hle.export.onnx` (``hle export``: the network as an ONNX graph with
everything prediction needs in its metadata, and :class:`~hle.export.onnx.OnnxModel`,
an onnxruntime session that stands in for :class:`hle.models.HLENet` in the prediction
code), :mod:`~hle.export.explore` (``hle explore``: one HTML file per set of images
that shows the embedding and computes the kernels of Eq. 9 and Sec. 3.5 in the browser)
and :mod:`~hle.export.cli` (the two sub-commands). ``onnx``, ``onnxruntime`` and
``onnxscript`` are optional (``pip install hle[export]``) and imported only when used.
Nothing is imported here eagerly.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_bytes_atomic"]


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, ``os.replace``.

    An interrupted write leaves ``path`` as it was (absent or the previous file),
    never half written. The folder is created if needed.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the result private
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
