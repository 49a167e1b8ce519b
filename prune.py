"""Step 4: prune channels by one global ranking (Taylor importance by default, the same as the sparse stage's); writes
pruned.pt and a per-layer report."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"prune_ratio": 0.6, "save_dir": "runs/yoloslim/prune-0.6"};
# every other default is in yoloslim/settings.py (`python prune.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("prune", **DEFAULTS).parse_args())
