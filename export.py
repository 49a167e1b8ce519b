"""Step 6b: export a checkpoint (ONNX by default; --format openvino / torchscript, --quantize 8 --data D for INT8),
then check the artifact: FP32 against the torch model's outputs, INT8 by validating the artifact itself."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"format": "openvino"};
# every other default is in yoloslim/settings.py (`python export.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("export", **DEFAULTS).parse_args())
