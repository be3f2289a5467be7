"""Registry keys and names known without importing torch: the command line's ``choices`` (``metavote --help``
stays instant). tests/test_cli.py checks that they equal the real registry, ``metavote.methods.METHODS``;
a new method adds its key here too. (Profile names come from :mod:`metavote.profiles`, itself torch-free.)
"""

from __future__ import annotations

METHOD_KEYS: tuple[str, ...] = (
    "ahnp", "dlth", "ifp", "iht-reptile", "mest", "mvp", "nearest", "power", "random", "random-paper", "tp-iterative", "tp-magnitude",
    "tp-taylor", "uvc",
)

RUNTIMES: tuple[str, ...] = ("onnxruntime", "openvino")
"""What can run an exported ``.onnx`` model (``predict --runtime``; :func:`metavote.deploy.open_model`)."""

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
"""What an exported model runs in (``export --precision``, ``predict --precision``; :mod:`metavote.deploy`)."""
