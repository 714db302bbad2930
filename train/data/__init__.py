"""The data layer: the HW2 layout, SVHN format-1 conversion, synthetic data, statistics, digit-data.

Its own package so that making, converting and inspecting data needs no torch: it imports only
digit_reader.runtime (and numpy, Pillow, click; h5py for .mat files), never the rest of train,
export or benchmarks, which all build on it (runtime <- data <- train <- export; enforced by
tests/test_imports.py).
"""
