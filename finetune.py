"""Step 5: fine-tune the pruned model as it is (the stock trainer would rebuild the full-width network)."""

from yoloslim.cli import PROJECT, parser_for, run

if __name__ == "__main__":
    parser = parser_for(
        "finetune", weights=f"{PROJECT}/prune/pruned.pt", data="demo", epochs=20, imgsz=160, batch=16, name="finetune"
    )
    run(parser.parse_args())
