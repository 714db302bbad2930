"""Every default of `digit-export` in one place (torch-free, so `--help` starts fast).

The library's functions and the CLI's options both read these; the export gate's rule is
here too, because the gate and `digit-bench parity` must hold every form to the same rule.
"""

OPSET = 18  # RoiAlign's coordinate_transformation_mode needs >= 16; TensorRT 10 parses 18
PARITY_IMAGES = 32  # images every exported form must read as the eager model does
WORKSPACE_GIB = 4.0  # TensorRT builder workspace

# precision -> (ONNX graph, TensorRT engine built from it)
FILES = {
    "fp32": ("model.onnx", "model.engine"),
    "fp16": ("model.fp16.onnx", "model.fp16.engine"),
    "int8": ("model.int8.onnx", "model.int8.engine"),
}
CALIB_CACHE = "model.int8.calib.json"  # beside model.int8.onnx: rebuilds reuse it

# --int8 (export/int8.py says why each)
CALIB_IMAGES = 128  # canvases the activation ranges are measured on
CALIB_METHOD = "max"  # max | percentile
CALIB_PERCENTILE = 99.99
# 98 % of 32 images would allow no miss: a good model (~1 % flips) would fail ~28 % of the time
INT8_PARITY_IMAGES = 200

# The parity rule (export gate and digit-bench parity)
BOX_TOL_PX = 0.5  # fp32: matched boxes within half a pixel
SCORE_TOL = 1e-3  # fp32: matched scores within this
FP16_MIN_AGREEMENT = 0.99  # fp16: share of images with the eager model's number
INT8_MIN_AGREEMENT = 0.98  # int8: share of images with the eager model's number ...
INT8_MAX_ACCURACY_DROP = 0.01  # ... and whole-number accuracy at most this far below eager's
