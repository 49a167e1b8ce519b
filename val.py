"""Step 6a: validate a checkpoint: Ultralytics' metrics table and the parameters / GFLOPs line."""

from yoloslim.cli import parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for("val", weights=weights_of("finetune"), data=None, imgsz=None, batch=16)  # None: as trained
    run(parser.parse_args())
