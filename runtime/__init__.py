"""Torch-free base of digit-reader: the preprocessing contract, the decoding rule and the reader.

Nothing in this package may import torch, torchvision, `train` or `export`
(tests/test_imports.py enforces it), so a deployment box needs only numpy,
pillow, click and one inference backend.
"""

__version__ = "0.1.0"

# Backends whose modules import an optional extra at import time (none yet; see the extras).
OPTIONAL_BACKENDS: frozenset[str] = frozenset()
