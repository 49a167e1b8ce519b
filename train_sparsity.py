"""Step 2: sparsity training: an L1 penalty `sr` on prunable BN gammas (decayed linearly over the run), and a
target: `sparsity` of the prunable channels driven to exact zero by the last epoch (0 = the plain L1 form)."""

from yoloslim.cli import parser_for, run

# Your own defaults go here, e.g. {"sparsity": 0.6, "epochs": 100};
# every other default is in yoloslim/settings.py (`python train_sparsity.py --help` lists them).
DEFAULTS: dict = {}

if __name__ == "__main__":
    run(parser_for("sparse", **DEFAULTS).parse_args())
