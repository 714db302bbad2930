"""Torch-free base of digit-reader: the preprocessing contract, the decoding rule and the reader.

Nothing in this package may import torch, torchvision, `train` or `export`
(tests/test_imports.py enforces it), so a deployment box needs only numpy,
pillow, click and one inference backend. Optional extras (ray and pyarrow for
`digit-read --ray`) are imported inside functions only: every module imports without them.
"""

__version__ = "0.1.0"
