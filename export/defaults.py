"""Every default of `digit-export` in one place (torch-free, so `--help` starts fast).

The library's functions and the CLI's options both read these; the export gate's rule is
here too, because the gate and `digit-bench parity` must hold every form to the same rule.
"""

OPSET = 18  # RoiAlign's coordinate_transformation_mode needs >= 16; TensorRT 10 parses 18
PARITY_IMAGES = 32  # images every exported form must read as the eager model does
WORKSPACE_GIB = 4.0  # TensorRT builder workspace

# The parity rule (export gate and digit-bench parity)
BOX_TOL_PX = 0.5  # fp32: matched boxes within half a pixel
SCORE_TOL = 1e-3  # fp32: matched scores within this
FP16_MIN_AGREEMENT = 0.99  # fp16: share of images with the eager model's number
