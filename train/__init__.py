"""Training side of digit-reader: data sets (HW2 layout, SVHN .mat, synthetic), model, loop.

Modules import torch lazily where they can, so `digit-data` starts fast.
"""
