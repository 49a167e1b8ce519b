"""Step 4: prune channels by one global ranking (Taylor importance by default, the same as the sparse stage's); writes
pruned.pt and a per-layer report."""

from yoloslim.cli import PROJECT, parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for("prune", weights=weights_of("sparse"), data=None, prune_ratio=0.5, save_dir=f"{PROJECT}/prune")
    run(parser.parse_args())
