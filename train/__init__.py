"""Training side of digit-reader: model, presets, augmentation, the loop, evaluation, checkpoints.

Data sets (HW2 layout, SVHN .mat, synthetic, statistics, `digit-data`) are the torch-free
subpackage `digit_reader.train.data`. Modules import torch lazily where they can, so
`digit-train --help` starts fast.
"""
