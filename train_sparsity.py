"""Step 2: sparsity training: an L1 penalty `sr` on prunable BN gammas (decayed linearly over the run), and a
target: `sparsity` of the prunable channels driven to exact zero by the last epoch (0 = the plain L1 form)."""

from yoloslim.cli import parser_for, run, weights_of

if __name__ == "__main__":
    parser = parser_for(
        "sparse",
        weights=weights_of("normal"),
        data="demo",
        sr=1e-2,
        sparsity=0.5,
        epochs=30,
        imgsz=160,
        batch=16,
        name="sparse",
    )
    run(parser.parse_args())
