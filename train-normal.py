"""Step 1: normal training (sr=0)."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"data": "my_data.yaml", "epochs": 100};
# every other default is in yoloslim/settings.py (`python train-normal.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("train", **DEFAULTS).parse_args())
