"""Step 6b: export a checkpoint (ONNX by default; --format openvino / torchscript, --quantize 8 --data D for INT8),
then check the artifact: FP32 against the torch model's outputs, INT8 by validating the artifact itself."""

from yoloslim.cli import parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for("export", weights=weights_of("finetune"), imgsz=None)  # None: the training imgsz
    run(parser.parse_args())
