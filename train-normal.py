"""Step 1: normal training (sr=0). Edit the defaults below, or pass flags (see --help)."""

from yoloslim.cli import parser_for, run

if __name__ == "__main__":
    parser = parser_for("train", weights="yolov8n.yaml", data="demo", epochs=30, imgsz=160, batch=16, name="normal")
    run(parser.parse_args())
