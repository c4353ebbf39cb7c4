"""Segmentation models: interface contract (CONTRIBUTING.md "Model interface") and registry."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from LiverTumorAILib.errors import WeightsError  # noqa: E402
from LiverTumorAILib.models import registry  # noqa: E402

SEG_2D = ["dual-stream", "tam-unet", "fusion", "unet2d"]
WITH_ATTENTION = ["dual-stream", "tam-unet", "fusion"]
B, S = 2, 64


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core box (CONTRIBUTING)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {a: registry.build_model(a).eval() for a in SEG_2D}


def _inputs(model, b=B, s=S, requires_grad=False):
    g = torch.Generator().manual_seed(1)
    ct = torch.randn(b, len(model.ct_offsets), s, s, generator=g)
    mri = torch.randn(b, len(model.mri_offsets), s, s, generator=g) if model.mri_offsets else None
    if requires_grad:
        ct.requires_grad_(True)
        if mri is not None:
            mri.requires_grad_(True)
    return ct, mri


@pytest.mark.parametrize("arch", SEG_2D + ["unet3d", "localizer"])
def test_default_config_is_json_and_complete(arch):
    cfg = registry.default_config(arch)
    assert json.loads(json.dumps(cfg)) == cfg
    if arch != "localizer":
        for key in ("ct_offsets", "mri_offsets", "num_classes"):
            assert key in cfg, key
    assert cfg["num_classes"] == (2 if arch == "localizer" else 3)


def test_registry_refuses_unknown_architecture_and_keys():
    with pytest.raises(WeightsError, match="unknown architecture"):
        registry.build_model("no-such-net")
    with pytest.raises(WeightsError, match="not accepted"):
        registry.build_model("tam-unet", {"base_chanels": 8})
    assert set(SEG_2D) <= set(registry.ARCHITECTURES)


@pytest.mark.parametrize("arch", SEG_2D)
def test_forward_shape_and_no_maps_by_default(models, arch):
    m = models[arch]
    m.keep_attention = False
    m.attention_maps = {}
    ct, mri = _inputs(m)
    with torch.inference_mode():
        y = m(ct, mri)
    assert y.shape == (B, 3, S, S)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    assert m.attention_maps == {}


@pytest.mark.parametrize("arch", WITH_ATTENTION)
def test_attention_maps(models, arch):
    m = models[arch]
    m.keep_attention = True
    try:
        ct, mri = _inputs(m)
        with torch.inference_mode():
            m(ct, mri)
        maps = m.attention_maps
        assert maps, "no attention maps"
        for name, a in maps.items():
            assert a.shape == (B, 1, S, S), name
            assert a.dtype == torch.float32
            assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0, name
    finally:
        m.keep_attention = False


@pytest.mark.parametrize("arch", SEG_2D)
def test_deterministic_in_eval(models, arch):
    m = models[arch]
    ct, mri = _inputs(m)
    with torch.inference_mode():
        assert torch.equal(m(ct, mri), m(ct, mri))


def test_fusion_class_logits_and_missing_mri(models):
    m = models["fusion"]
    ct, mri = _inputs(m)
    with torch.inference_mode():
        m(ct, mri)
        assert m.class_logits.shape == (B, 2)
        y = m(ct, None)  # MRI absent -> zeros, still a valid forward
    assert y.shape == (B, 3, S, S)


def test_dual_stream_channels_and_gradients_reach_both_streams():
    m = registry.build_model("dual-stream").train()
    assert m.ct_offsets == sorted(set(m.spatial_offsets) | set(m.context_offsets))
    assert len(m.spatial_index) == 7
    ct, _ = _inputs(m, requires_grad=True)
    m(ct).square().mean().backward()
    assert m.encoder.conv1.weight.grad.abs().sum() > 0
    assert m.context_enc[0][0][0].weight.grad.abs().sum() > 0
    only_context = [i for i in m.context_index if i not in m.spatial_index]
    only_spatial = [i for i in m.spatial_index if i not in m.context_index]
    assert ct.grad[:, only_context].abs().sum() > 0
    assert ct.grad[:, only_spatial].abs().sum() > 0
    m2 = registry.build_model("dual-stream", {"context_offsets": [-8, 0, 8]})
    assert m2.ct_offsets == [-8, -3, -2, -1, 0, 1, 2, 3, 8] == m2.livertumorai_config["ct_offsets"]
    with pytest.raises(ValueError, match="union"):
        registry.build_model("dual-stream", {"ct_offsets": [0]})


def test_fusion_gradients_reach_both_encoders():
    m = registry.build_model("fusion").train()
    ct, mri = _inputs(m, requires_grad=True)
    y = m(ct, mri)
    (y.square().mean() + m.class_logits.square().mean()).backward()
    assert m.ct_enc.blocks[0][0][0].weight.grad.abs().sum() > 0
    assert m.mri_enc.blocks[0][0][0].weight.grad.abs().sum() > 0
    assert ct.grad.abs().sum() > 0 and mri.grad.abs().sum() > 0


def test_tam_unet_variants():
    m = registry.build_model("tam-unet", {"ct_offsets": [-1, 0, 1], "tam_per_channel": True, "base_channels": 8}).eval()
    m.keep_attention = True
    with torch.inference_mode():
        y = m(torch.randn(1, 3, 32, 32))
    assert y.shape == (1, 3, 32, 32)
    assert all(a.shape == (1, 1, 32, 32) for a in m.attention_maps.values())


@pytest.mark.parametrize("arch", SEG_2D)
def test_channels_last_and_bf16_autocast(models, arch):
    m = models[arch].to(memory_format=torch.channels_last)
    m.keep_attention = True
    try:
        ct, mri = _inputs(m, b=1, s=32)
        cl = torch.channels_last
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(ct.to(memory_format=cl), None if mri is None else mri.to(memory_format=cl))
        assert y.shape == (1, 3, 32, 32) and torch.isfinite(y.float()).all()
        for a in m.attention_maps.values():
            assert a.dtype == torch.float32 and float(a.min()) >= 0 and float(a.max()) <= 1
    finally:
        m.keep_attention = False
        m.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("arch,out", [("unet3d", 3), ("localizer", 2)])
def test_3d_models(arch, out):
    m = registry.build_model(arch).eval()
    with torch.inference_mode():
        y = m(torch.randn(1, 1, 16, 32, 32))
    assert y.shape == (1, out, 16, 32, 32)


@pytest.mark.parametrize("switches", [{"attention_gates": False}, {"context_stream": False},
                                      {"attention_gates": False, "context_stream": False}])
def test_dual_stream_ablation_switches(switches):
    """Paper 001 ablations: without attention gates and/or without the contextual stream."""
    from LiverTumorAILib.models.registry import build_model

    full = build_model("dual-stream")
    model = build_model("dual-stream", switches).eval()
    cfg = model.livertumorai_config
    n = len(cfg["ct_offsets"])
    if switches.get("context_stream") is False:
        assert cfg["ct_offsets"] == cfg["spatial_offsets"]
    model.keep_attention = True
    with torch.inference_mode():
        out = model(torch.randn(1, n, 64, 64))
    assert out.shape == (1, 3, 64, 64)
    names = set(model.attention_maps)
    if switches.get("attention_gates") is False:
        assert names == set()
    else:
        assert names and not any(k.startswith("context") for k in names)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
