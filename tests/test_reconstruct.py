"""Train-free repair of a pruned model: least-squares reconstruction and BN re-estimation (reconstruct.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from ultralytics.nn.modules.block import DFL

from .conftest import GAMMA, assert_one_line_error, build_model, stock_predict, yoloslim_cli
from yoloslim import steps
from yoloslim.checkpoint import load_model, pruned_info
from yoloslim.prune import prune_model
from yoloslim.reconstruct import (
    Reconstruction,
    Repair,
    _columns,
    _dense_convs,
    _Gram,
    _levels,
    _picks,
    calibration_images,
    recalibrate_bn,
)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    return (torch.rand(n, 3, 64, 64) * 255).to(torch.uint8)


def _outputs(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images.float() / 255)[0]


def test_gram_recovers_a_linear_map() -> None:
    """The accumulated normal equations solve an exact linear problem exactly, intercept included."""
    torch.manual_seed(0)
    w, b = torch.randn(7, 3), torch.randn(3)
    gram = _Gram()
    for _ in range(4):
        x = torch.randn(50, 7)
        gram.add(x, x @ w + b)
    solution = gram.solve(0.0)
    assert torch.allclose(solution[:-1].float(), w, atol=1e-4) and torch.allclose(solution[-1].float(), b, atol=1e-4)
    assert gram.error(solution) < 1e-6  # float32 accumulation: the residual of the expanded square
    assert gram.error(torch.zeros_like(solution)) > 0.5  # predicting 0 leaves the whole signal (its mean included)
    exact = torch.cat([w, b[None]]).double()
    assert torch.allclose(gram.solve(1e3, prior=exact), exact, atol=1e-6)  # a ridge towards the answer keeps it
    assert gram.solve(1e3)[:-1].abs().max() < 0.1 * w.abs().max()  # a ridge towards 0 shrinks it


def test_reconstruction_brings_the_pruned_model_back_to_the_original() -> None:
    """On held-out images the repaired model's outputs are much closer to the unpruned model's than the cut alone;
    every fit lowers its conv's error, shapes are unchanged and the fixed DFL decode is never touched."""
    model = build_model()
    pruned, plan, _ = prune_model(model, 0.3, ranking=GAMMA)
    held_out = _images(8, seed=1)
    reference, cut = _outputs(model, held_out), _outputs(pruned, held_out)
    shapes = {k: v.shape for k, v in pruned.state_dict().items()}
    dfl = [m.conv.weight.clone() for m in pruned.modules() if isinstance(m, DFL)]
    fits = Reconstruction(model, pruned, plan.keep).run(_images(48))
    repaired = _outputs(pruned, held_out)
    assert (repaired - reference).abs().mean() < 0.25 * (cut - reference).abs().mean()
    assert fits and all(f.after <= f.before for f in fits)
    assert any(f.inputs[1] < f.inputs[0] for f in fits)  # convs that lost inputs were re-fitted
    assert {k: v.shape for k, v in pruned.state_dict().items()} == shapes
    assert all(torch.equal(m.conv.weight, w) for m, w in zip([m for m in pruned.modules() if isinstance(m, DFL)], dfl))


def test_nothing_removed_nothing_refitted() -> None:
    """A conv that reads exactly what the original reads is left as it is: at ratio 0 no conv is fitted."""
    model = build_model()
    pruned, plan, _ = prune_model(model, 0.0, ranking=GAMMA)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    assert Reconstruction(model, pruned, plan.keep).run(_images(16)) == []
    assert all(torch.equal(v, before[k]) for k, v in pruned.state_dict().items())


def test_reconstruction_is_deterministic() -> None:
    """The same images give the same repaired weights, bit for bit."""
    model = build_model()
    states = []
    for _ in range(2):
        pruned, plan, _ = prune_model(model, 0.4, ranking=GAMMA)
        Reconstruction(model, pruned, plan.keep).run(_images(24))
        states.append(pruned.state_dict())
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())


def test_recalibrated_bn_holds_the_statistics_of_its_input() -> None:
    """After re-estimation the first BN's running mean and variance are those of its conv's output on the images."""
    model = build_model()
    images = _images(32)
    conv, bn = model.model[0].conv, model.model[0].bn
    momentum = bn.momentum
    recalibrate_bn(model, images)
    with torch.no_grad():
        y = conv(images.float() / 255)
    assert torch.allclose(bn.running_mean, y.mean((0, 2, 3)), atol=1e-4)
    batch_vars = torch.stack([b.var((0, 2, 3)) for b in y.split(16)])  # unbiased per batch, as BN keeps it
    assert torch.allclose(bn.running_var, batch_vars.mean(0), rtol=1e-3)
    assert not bn.training and bn.momentum == momentum


def test_calibration_images_are_the_first_training_images(tiny_ckpt, tiny_data) -> None:
    """Calibration reads the training images in file order, letterboxed to imgsz, as many as asked (or all)."""
    model, _ = load_model(tiny_ckpt)
    five = calibration_images(model, tiny_data, 64, 5)
    assert five.shape == (5, 3, 64, 64) and five.dtype == torch.uint8
    assert torch.equal(calibration_images(model, tiny_data, 64, 3), five[:3])
    assert len(calibration_images(model, tiny_data, 64, 10_000)) < 10_000


@pytest.fixture(scope="module")
def repaired(tiny_ckpt, tiny_data, tmp_path_factory):
    """The tiny checkpoint pruned at 0.4 by |gamma|, repaired from its training images as the default does, and cut
    alone (`--no-reconstruct`)."""
    out = {}
    for name, how in (("repaired", Repair()), ("cut", Repair(reconstruct=False))):
        out[name] = steps.prune(
            tiny_ckpt,
            ratio=0.4,
            save_dir=tmp_path_factory.mktemp(name),
            data=tiny_data,
            validate_pruned=False,
            how=how,
            ranking=GAMMA,
        )
    return out


def test_prune_repairs_by_default_and_reports_each_conv(repaired) -> None:
    """`steps.prune` with data re-fits by default (not when told not to): the report lists each conv's error before and
    after, the checkpoint records the repair, stock Ultralytics loads it, and the convs whose fit lowered their error
    carry new weights. (Whether the whole network's output comes closer is asserted on held-out images in
    `test_reconstruction_brings_the_pruned_model_back_to_the_original`: a one-epoch checkpoint's outputs are too
    nearly constant for that, and on some CPUs its cut alone came closer.)"""
    report = (repaired["repaired"].parent / "prune_report.txt").read_text()
    assert "reconstruction" in report and "error before" in report
    assert "reconstruction" not in (repaired["cut"].parent / "prune_report.txt").read_text()
    model, ckpt = load_model(repaired["repaired"])
    assert pruned_info(model)["repair"] == {"reconstruct": True, "bn": False, "images": 256}
    assert pruned_info(load_model(repaired["cut"])[0])["repair"] == {"reconstruct": False, "bn": False, "images": 256}
    assert "RESULTS 1" in stock_predict(repaired["repaired"])
    rows = [line.split() for line in report.split("error before", 1)[1].splitlines()[1:] if line.strip()]
    errors = {name: (float(before), float(after)) for name, _, before, after in rows}
    assert errors and all(after <= before for before, after in errors.values())
    lowered = [name for name, (before, after) in errors.items() if after < before]
    assert lowered, report
    fitted, cut = (dict(load_model(repaired[k])[0].named_modules()) for k in ("repaired", "cut"))
    assert all(not torch.equal(fitted[name].weight, cut[name].weight) for name in lowered)


def test_repaired_onnx_matches_torch(repaired) -> None:
    """The repaired checkpoint exports to ONNX that gives torch's outputs."""
    result = steps.export(repaired["repaired"], imgsz=64)
    assert result["max_diff"] < 1e-3


@pytest.mark.parametrize("kernel, stride, dilation, padding", [(3, 1, 1, 1), (3, 2, 1, 1), (1, 1, 1, 0), (5, 1, 2, 4)])
def test_columns_at_sampled_positions_are_unfolds(kernel, stride, dilation, padding) -> None:
    """The im2col rows gathered at a few output positions are exactly `F.unfold`'s columns there."""
    conv = nn.Conv2d(4, 6, kernel, stride, padding, dilation)
    x = torch.randn(2, 4, 11, 9)
    out = conv(x)
    last = out.shape[2] * out.shape[3] - 1
    picks = torch.tensor([[0, 3, 7, last], [last, 1, 5, 2]])  # each image its own positions
    unfolded = torch.nn.functional.unfold(x, kernel, dilation, padding, stride)
    expected = torch.stack([unfolded[n][:, picks[n]].T for n in range(2)])
    assert torch.equal(_columns(conv, x, picks, out.shape[3]), expected)


def test_levels_follow_the_data_flow() -> None:
    """Convs that read only the layer's inputs are level 0 (the head's first convs, side by side), a conv reading
    another's output comes after it; the C2f chain is one conv per level."""
    model = build_model()
    head, c2f = model.model[-1], model.model[2]
    head_convs = [m for _, m in _dense_convs(head, "")]
    inputs = [torch.randn(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
    levels, ranks = _levels(head, head_convs, inputs)
    assert sorted(set(levels)) == [0, 1, 2] and levels.count(0) == 6 and all(r >= 0 for r in ranks)
    chain, _ = _levels(c2f, [m for _, m in _dense_convs(c2f, "")], torch.randn(1, 32, 16, 16))
    assert chain == [0, 3, 1, 2]  # cv1, cv2 (reads all), m.0.cv1, m.0.cv2


@pytest.mark.slow  # a subprocess
def test_calib_images_must_be_a_whole_number(tiny_ckpt) -> None:
    """`--calib-images 0` is a one-line error before anything is read or written."""
    assert_one_line_error(
        yoloslim_cli("prune", "--weights", str(tiny_ckpt), "--calib-images", "0"), "calib_images=0 must be a whole"
    )


def test_focused_positions_go_where_the_original_sees_objects() -> None:
    """One image whose saliency (the original's class score on its finest grid, 4 x 4) is all in one cell: at an
    8 x 8 output that cell is 4 of 64 positions. Uniform draws (focus 0) land there about 4/64 of the time; at focus
    0.5 each of the 4 weighs 17 times any other, so about half of 8 draws (at most 4 of 8) land there. Draws are
    distinct; a 2 x 2 output pools the map (max), keeping the object in its own cell."""
    saliency = torch.zeros(1, 4, 4)
    saliency[0, 0, 0] = 1.0
    hot = torch.tensor([0, 1, 8, 9])  # the top-left 2 x 2 of 8 x 8, flat

    def share_on_object(focus: float) -> float:
        draws = [_picks((8, 8), 8, saliency, focus, seed=k) for k in range(40)]
        assert all(d.shape == (1, 8) and len(set(d[0].tolist())) == 8 for d in draws)
        return torch.isin(torch.cat(draws), hot).float().mean().item()

    assert share_on_object(0.0) < 0.15 and share_on_object(0.5) > 0.3
    pooled = torch.stack([_picks((2, 2), 1, saliency, 0.5, seed=k)[0, 0] for k in range(40)])
    assert (pooled == 0).float().mean() > 0.45  # 0.625 there (0.5/4 + 0.5), 0.25 uniform
    with pytest.raises(ValueError, match="focus=1 must be in"):
        Reconstruction(torch.nn.Identity(), torch.nn.Identity(), {}, focus=1)
