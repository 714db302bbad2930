"""Every default of `digit-export` in one place (torch-free, so `--help` starts fast).

The library's functions and the CLI's options both read these. The parity rule itself (what
fp32, fp16, bf16 and int8 forms must meet) is runtime.contract's: the gate and `digit-bench
parity` hold every form to that one rule.
"""

OPSET = 18  # RoiAlign's coordinate_transformation_mode needs >= 16; TensorRT 10 parses 18
PARITY_IMAGES = 32  # images every exported form must read as the eager model does
WORKSPACE_GIB = 4.0  # TensorRT builder workspace
CALIB_CACHE = "model.int8.calib.json"  # beside model.int8.onnx: rebuilds reuse it
GRAPH_CACHE_ENTRIES = 4  # model.onnx files export/graph_cache.py keeps (least recently used go)

# --int8 (export/int8.py says why each)
# canvases the activation ranges are measured on: on the demo's model trained on an AVX2 CPU,
# 128 images gave 97.5 % same numbers as eager (one flip under the gate), all 200 valid 99.5 %
CALIB_IMAGES = 256
# max | percentile. On the demo's model trained on an AVX-512 CPU, max's ranges read 98.0 % of
# the 200 gate images as eager in ONNX Runtime and 97.5 % in OpenVINO (under the gate), the
# 99.99th percentile 99.0 % in both (`make demo` uses it). max stays the default: percentile's
# histograms are single-threaded NumPy, and at R101 800x1344 they had not finished 32 canvases
# after 8 minutes (max: about a minute).
CALIB_METHOD = "max"
CALIB_PERCENTILE = 99.99
# 98 % of 32 images would allow no miss: a good model (~1 % flips) would fail ~28 % of the time
INT8_PARITY_IMAGES = 200
