"""Step 3: histograms of prunable BN gammas before and after sparsity training (PNG + text summary); the line
marks the gamma threshold of --prune-ratio (use your train_sparsity.py --sparsity)."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"prune_ratio": 0.6};
# every other default is in yoloslim/settings.py (`python vis-bn-weight.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("gamma", **DEFAULTS).parse_args())
