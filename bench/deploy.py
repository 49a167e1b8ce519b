r"""The deploy table: for an unpruned model and pruned ones, each deployable kind (format and precision) with its file
size, batch-1 CPU latency (every artifact timed side by side in interleaved rounds) and the mAP50-95 of the artifact
itself. Run it while nothing else uses the CPU.

    python bench/deploy.py --models unpruned=runs/x/normal/weights/best.pt 0.40x=runs/x/finetune/weights/best.pt \
        --data datasets/hardhat/hardhat.yaml --imgsz 320 --kinds onnx onnx-int8 openvino openvino-int8 \
        --run-dir runs/deploy --out docs/deploy_hardhat.md
"""

from __future__ import annotations

from pathlib import Path

import yoloslim  # noqa: F401  (offline settings first)
from common import emit, parser, write_csv

from yoloslim import steps
from yoloslim.report import DEPLOY_COLUMNS, DEPLOY_FIELDS, deploy_rows


def main() -> None:
    p = parser(__doc__, data=True, imgsz=320, run_dir="runs/deploy", repeats=50, beside="a CSV")
    p.add_argument("--models", nargs="+", required=True, help="LABEL=checkpoint.pt, the unpruned model first")
    p.add_argument("--kinds", nargs="+", default=["onnx", "onnx-int8"], help="onnx, onnx-int8, openvino, ...")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    if "onnx" not in a.kinds:
        p.error("--kinds must include onnx: latency and mAP are given against the FP32 ONNX file")
    models = dict(item.split("=", 1) for item in a.models)
    rows = steps.deploy_table(
        {k: Path(v) for k, v in models.items()},
        a.kinds,
        data=a.data,
        imgsz=a.imgsz,
        work=a.run_dir,
        rounds=a.rounds,
        repeats=a.repeats,
    )
    caption = (
        f"Deployable artifacts at imgsz {a.imgsz} on {a.data}: batch-1 CPU latency (median of {a.repeats} runs in "
        f"{a.rounds} interleaved rounds; x = share of the unpruned FP32 ONNX file's), mAP50-95 of each artifact itself"
    )
    emit(caption, DEPLOY_COLUMNS, deploy_rows(rows), a.out)
    if a.out:
        write_csv(a.out.with_suffix(".csv"), DEPLOY_FIELDS, [[r[k] for k in DEPLOY_FIELDS] for r in rows])


if __name__ == "__main__":
    main()
