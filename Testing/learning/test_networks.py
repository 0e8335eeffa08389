"""The pose-regression network (`DiffRegLogic.learning.networks`): config, switches, start, learning.

Truth: the documented parameter sets of each switch; the positional
embedding is what breaks the token-permutation invariance of the attention
pooling (pooled output unchanged under a permutation of the bottleneck
tokens without it, changed with it); the untrained prediction is the
reference view (identity, zero translation) within stated bounds; GroupNorm
keeps samples independent (a batch's output equals each sample alone);
30 Adam steps on 8 fixed random images lower the poster loss far below
its start and below the best constant prediction (a no-learning baseline).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from DiffRegLogic.errors import InputError
from DiffRegLogic.geometry.rigid import so3_exp
from DiffRegLogic.learning.losses import pose_loss
from DiffRegLogic.learning.networks import PoseNet, PoseNetConfig, PosePrediction, count_parameters, describe
from DiffRegLogic.learning.rotations import geodesic_angle


def _small(**kwargs) -> PoseNetConfig:
    return PoseNetConfig(**{"image_size": 32, "backbone": "small", **kwargs})


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def _names(model: torch.nn.Module) -> set[str]:
    return {name for name, _ in model.named_parameters()}


def test_config_round_trip_and_defaults():
    default = PoseNetConfig()
    assert (default.image_size, default.backbone, default.rotation, default.heads) == (128, "efficientnet-b0", "6d", 4)
    assert default.decoder and default.attention and default.positional_embedding
    config = _small(rotation="quaternion", decoder=False, max_translation_mm=[40, 50, 60], dropout=0)
    assert config.max_translation_mm == (40.0, 50.0, 60.0)
    d = json.loads(json.dumps(config.to_dict()))
    assert PoseNetConfig.from_dict(d) == config
    assert PoseNetConfig.from_dict({}) == default


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": 48}, "multiple of 32"),
    ({"image_size": 0}, "positive integer"),
    ({"backbone": "resnet18"}, "backbone must be one of"),
    ({"rotation": "euler"}, "rotation must be one of"),
    ({"heads": 3}, "must divide embed_dim"),
    ({"attention": False}, "positional embedding needs the attention block"),
    ({"dropout": 1.0}, "dropout"),
    ({"max_translation_mm": (60.0, -1.0, 60.0)}, "max_translation_mm"),
    ({"max_translation_mm": (60.0, 60.0)}, "max_translation_mm"),
    ({"decoder": "yes"}, "true or false"),
])
def test_config_refuses_bad_values(kwargs, message):
    with pytest.raises(InputError, match=message):
        PoseNetConfig(**kwargs)


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(InputError, match=r"unknown network config key\(s\) 'depth'"):
        PoseNetConfig.from_dict({"image_size": 64, "depth": 3})


def test_switches_change_the_model_as_documented():
    full = PoseNet(_small()).eval()
    names = _names(full)
    assert any(n.startswith("decoder.") for n in names)
    assert any(n.startswith("attention.attention.") for n in names) and "attention.position" in names
    assert full.attention.position.shape == (1, 1, 1, 256)
    out = full(_images(3))
    assert isinstance(out, PosePrediction)
    assert out.rotation.shape == (3, 3, 3) and out.translation_mm.shape == (3, 3)
    assert out.reconstruction.shape == (3, 1, 32, 32)
    assert 0 < out.reconstruction.min() and out.reconstruction.max() < 1

    no_decoder = PoseNet(_small(decoder=False)).eval()
    assert not any(n.startswith("decoder.") for n in _names(no_decoder))
    assert no_decoder(_images(2)).reconstruction is None
    assert count_parameters(no_decoder) < count_parameters(full)

    no_attention = PoseNet(_small(attention=False, positional_embedding=False))
    assert not any(n.startswith("attention.") for n in _names(no_attention))
    assert no_attention.head[0].in_features == 128  # pooled bottleneck channels

    no_position = PoseNet(_small(positional_embedding=False))
    assert "attention.position" not in _names(no_position)
    assert any(n.startswith("attention.attention.") for n in _names(no_position))

    quaternion = PoseNet(_small(rotation="quaternion"))
    assert quaternion.head[-1].out_features == 7 and full.head[-1].out_features == 9
    skips = PoseNet(_small(decoder_skips=True))
    assert skips.decoder.stages[0][0].in_channels == 128 + 96
    assert full.decoder.stages[0][0].in_channels == 128


@pytest.mark.parametrize("positional", [True, False])
def test_positional_embedding_breaks_token_permutation_invariance(positional):
    torch.manual_seed(1)
    model = PoseNet(PoseNetConfig(image_size=64, backbone="small", positional_embedding=positional)).eval()
    bottleneck = torch.randn(2, 128, 2, 2)
    permuted = bottleneck.flatten(2)[:, :, [3, 1, 0, 2]].reshape(2, 128, 2, 2)
    with torch.no_grad():
        same = model.attention(bottleneck)
        other = model.attention(permuted)
        if positional:
            # perturbing the embedding changes the pose output
            before = model(_images(2, 64)).translation_mm
            model.attention.position.add_(torch.randn_like(model.attention.position))
            after = model(_images(2, 64)).translation_mm
    difference = (same - other).abs().max().item()
    if positional:
        assert difference > 1e-3
        assert (before - after).abs().max().item() > 1e-4
    else:
        assert difference < 1e-5


@pytest.mark.parametrize("rotation", ["6d", "quaternion"])
def test_initial_prediction_is_the_reference_view(rotation):
    torch.manual_seed(2)
    model = PoseNet(_small(rotation=rotation, image_size=64)).eval()
    with torch.no_grad():
        out = model(_images(6, 64, seed=3) * 3)
    eye = torch.eye(3).expand(6, 3, 3)
    assert geodesic_angle(out.rotation, eye).max().item() < math.radians(0.5)
    assert out.translation_mm.norm(dim=-1).max().item() < 1.0  # mm, of a +-60 mm range


def test_wrong_input_is_refused():
    model = PoseNet(_small())
    with pytest.raises(InputError, match=r"trained at 32 x 32.*got \(2, 1, 64, 64\).*network_input"):
        model(_images(2, 64))
    with pytest.raises(InputError, match="trained at 32 x 32"):
        model(torch.zeros(2, 3, 32, 32))
    with pytest.raises(InputError, match="trained at 32 x 32"):
        model(torch.zeros(32, 32))
    with pytest.raises(InputError, match="needs a PoseNetConfig"):
        PoseNet({"image_size": 32})


def test_samples_are_independent_and_float64_input_is_cast():
    torch.manual_seed(4)
    model = PoseNet(_small()).eval()
    images = _images(4, seed=5)
    with torch.no_grad():
        batch = model(images.double())
        alone = model(images[2:3])
    assert batch.rotation.dtype == torch.float32
    torch.testing.assert_close(batch.translation_mm[2:3], alone.translation_mm, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batch.reconstruction[2:3], alone.reconstruction, atol=1e-5, rtol=1e-4)


def test_efficientnet_b0_forward():
    torch.manual_seed(6)
    model = PoseNet(PoseNetConfig(image_size=64)).eval()
    assert count_parameters(model) > 4_000_000  # the b0 feature extractor alone is ~5.3 M
    assert model.attention.position.shape == (1, 2, 2, 256)
    with torch.no_grad():
        out = model(_images(2, 64))
    assert out.rotation.shape == (2, 3, 3) and out.reconstruction.shape == (2, 1, 64, 64)
    assert geodesic_angle(out.rotation, torch.eye(3).expand(2, 3, 3)).max().item() < math.radians(0.5)


def test_count_parameters_and_describe():
    model = PoseNet(_small())
    total = count_parameters(model)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    frozen = sum(p.numel() for p in model.backbone.parameters())
    assert count_parameters(model) == total - frozen
    assert count_parameters(model, trainable_only=False) == total
    line = describe(_small())
    assert "small" in line and "32 px" in line and "A+B+C(pos)" in line and "6d" in line
    assert "A+C(no pos)" in describe(_small(decoder=False, positional_embedding=False))
    assert "A+B," in describe(_small(attention=False, positional_embedding=False))


def test_overfits_eight_images():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(8, 1, 32, 32, generator=g)
    rotvec = (torch.rand(8, 3, generator=g, dtype=torch.float64) * 2 - 1) * math.radians(20)
    translation = (torch.rand(8, 3, generator=g, dtype=torch.float64) * 2 - 1) * 30
    rotation = so3_exp(rotvec)
    model = PoseNet(_small(decoder=False, dropout=0.0, max_translation_mm=(30.0, 30.0, 30.0)))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(30):
        out = model(images)
        loss = pose_loss(out.rotation, out.translation_mm, rotation, translation)
        first = loss.item() if first is None else first
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        out = model(images)
        final = pose_loss(out.rotation, out.translation_mm, rotation, translation).item()
        mean_rotation = so3_exp(rotvec.mean(0, keepdim=True)).expand(8, 3, 3)
        constant = pose_loss(mean_rotation, translation.mean(0, keepdim=True).expand(8, 3), rotation, translation)
    assert final < 0.2 * first
    assert final < 0.3 * constant.item()
