"""Step 6a: validate a checkpoint: Ultralytics' metrics table and the parameters / GFLOPs line."""

from yoloslim.cli import parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for("val", weights=weights_of("finetune"), data="demo", imgsz=160, batch=16)
    run(parser.parse_args())
