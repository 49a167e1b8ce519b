"""Step 6b: export a checkpoint to ONNX, then check it with onnxruntime against the torch model."""

from yoloslim.cli import parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for("export", weights=weights_of("finetune"), imgsz=None)  # None: the training imgsz
    run(parser.parse_args())
