"""Step 6a: validate a checkpoint: Ultralytics' metrics table and the parameters / GFLOPs line (the dataset and
imgsz default to the checkpoint's own)."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"data": "my_data.yaml"};
# every other default is in yoloslim/settings.py (`python val.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("val", **DEFAULTS).parse_args())
