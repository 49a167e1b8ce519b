"""Step 4: prune channels by a global BN-gamma threshold; writes pruned.pt and a per-layer report."""

from yoloslim.cli import PROJECT, parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for(
        "prune", weights=weights_of("sparse"), data=None, prune_ratio=0.5, save_dir=f"{PROJECT}/prune", round_to=1
    )
    run(parser.parse_args())
