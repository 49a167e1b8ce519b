"""Step 3: histograms of prunable BN gammas before and after sparsity training (PNG + text summary)."""

from yoloslim.cli import PROJECT, parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for(
        "gamma",
        weights=[weights_of("normal"), weights_of("sparse")],
        out=f"{PROJECT}/gamma/gamma_hist.png",
        prune_ratio=0.5,  # marks the gamma threshold of this prune ratio (use your train_sparsity.py --sparsity)
    )
    run(parser.parse_args())
