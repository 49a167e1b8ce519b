"""Step 5: fine-tune the pruned model as it is (the stock trainer would rebuild the full-width network)."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"epochs": 50};
# every other default is in yoloslim/settings.py (`python finetune.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("finetune", **DEFAULTS).parse_args())
