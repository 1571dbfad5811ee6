"""tomoclust.features.networks: YOPO presets and shapes, Gaussian dropout, the 3D autoencoder."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES
from tomoclust.features.networks import (
    YOPO_PRESETS,
    AutoEncoder3D,
    GaussianDropout,
    Yopo,
    YopoSettings,
    count_parameters,
)


def _yopo_parameters(cfg: YopoSettings, n_classes: int) -> int:
    """Parameters of YOPO written out by hand: 3³ convs (+ bias) and BatchNorm per block,
    BatchNorm1d on the pooled maxima, the embedding and the head."""
    widths = [cfg.width + i * cfg.width_step for i in range(cfg.blocks)]
    total, c_in = 0, 1
    for c in widths:
        total += 27 * c_in * c + c + 2 * c
        c_in = c
    pooled = sum(widths)
    total += 2 * pooled + pooled * cfg.feature_dim + cfg.feature_dim
    return total + cfg.feature_dim * n_classes + n_classes


def test_published_preset_has_about_6_3_million_parameters():
    cfg = YopoSettings.from_preset("published")
    assert cfg.blocks == 10 and cfg.width == 64 and cfg.feature_dim == 1024
    assert [cfg.width + i * cfg.width_step for i in range(cfg.blocks)][-1] == 208
    model = Yopo(cfg, n_classes=10)
    assert model.embed.out_features == 1024 and model.n_classes == 10
    n = count_parameters(model)
    assert n == _yopo_parameters(cfg, 10)
    assert abs(n - 6.3e6) / 6.3e6 < 0.10, n


@pytest.mark.parametrize("preset", [p for p in YOPO_PRESETS if p != "published"])  # above
def test_preset_feature_dims(preset):
    cfg = YopoSettings.from_preset(preset)
    model = Yopo(cfg, n_classes=3)
    assert model.embed.out_features == cfg.feature_dim == YOPO_PRESETS[preset]["feature_dim"]
    assert model.n_classes == 3
    assert count_parameters(model) == _yopo_parameters(cfg, 3)


def test_preset_overrides_and_unknown_preset():
    cfg = YopoSettings.from_preset("light", blocks=2, feature_dim=None)
    assert cfg.blocks == 2
    assert cfg.feature_dim == YOPO_PRESETS["light"]["feature_dim"]  # None keeps the preset
    with pytest.raises(ValueError, match="unknown YOPO preset"):
        YopoSettings.from_preset("huge")


@pytest.mark.parametrize("device", DEVICES)
def test_yopo_tiny_forward_shapes(device):
    torch.manual_seed(0)
    model = Yopo(YopoSettings.from_preset("tiny"), n_classes=3).to(device).eval()
    x = torch.randn(5, 1, 32, 32, 32, device=device)
    with torch.no_grad():
        logits = model(x)
        feats = model.features(x)
        again = model.features(x)
    assert logits.shape == (5, 3) and feats.shape == (5, 16)
    for t in (logits, feats):
        assert t.device.type == torch.device(device).type
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    torch.testing.assert_close(feats, again)  # eval mode: no dropout noise
    # particles are not mixed across the batch in eval mode
    with torch.no_grad():
        single = model.features(x[2:3])
    # (cuDNN may pick another algorithm, with TF32, for another batch size)
    tol = 1e-4 if device == "cpu" else 1e-2
    torch.testing.assert_close(single, feats[2:3], rtol=tol, atol=tol)


@pytest.mark.parametrize("device", DEVICES)
def test_yopo_light_forward_on_a_32_box(device):
    model = Yopo(YopoSettings.from_preset("light"), n_classes=4).to(device).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32, 32, device=device))
    assert out.shape == (2, 4) and out.device.type == torch.device(device).type


@pytest.mark.parametrize("device", DEVICES)
def test_new_head_changes_classes_and_stays_on_device(device):
    model = Yopo(YopoSettings.from_preset("tiny"), n_classes=2).to(device).eval()
    model.new_head(5)
    assert model.n_classes == 5
    assert model.head.weight.device.type == torch.device(device).type
    assert model.head.in_features == 16
    with torch.no_grad():
        out = model(torch.randn(3, 1, 16, 16, 16, device=device))
    assert out.shape == (3, 5)
    # the new head is part of the module: it is in the state dict and the parameters
    assert model.state_dict()["head.weight"].shape == (5, 16)
    assert any(p is model.head.weight for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
def test_gaussian_dropout_eval_is_identity(device):
    drop = GaussianDropout(0.5).to(device).eval()
    x = torch.randn(1000, device=device)
    assert torch.equal(drop(x), x)
    assert torch.equal(GaussianDropout(0.0).train()(x), x)  # rate 0: never any noise


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rate", [0.5, 0.2])
def test_gaussian_dropout_train_statistics(device, rate):
    torch.manual_seed(1)
    drop = GaussianDropout(rate).to(device).train()
    x = torch.full((400_000,), 3.0, device=device)
    y = drop(x)
    assert y.device.type == torch.device(device).type and y.dtype == torch.float32
    factor = y / 3.0  # the multiplicative noise
    expected_std = (rate / (1 - rate)) ** 0.5
    assert float(factor.mean()) == pytest.approx(1.0, abs=0.01)
    assert float(factor.std()) == pytest.approx(expected_std, rel=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_autoencoder_shapes(device):
    torch.manual_seed(0)
    model = AutoEncoder3D(16, code_dim=7, channels=4).to(device)
    x = torch.randn(3, 1, 16, 16, 16, device=device)
    recon, code = model(x)
    assert recon.shape == x.shape
    assert code.shape == (3, 7)
    assert recon.device.type == code.device.type == torch.device(device).type
    assert recon.dtype == code.dtype == torch.float32
    assert (code >= 0).all()  # ReLU code
    torch.testing.assert_close(model.encode(x), code)


@pytest.mark.parametrize("box", [18, 14, 6])
def test_autoencoder_rejects_box_not_divisible_by_4(box):
    with pytest.raises(ValueError, match="divisible by 4"):
        AutoEncoder3D(box)
