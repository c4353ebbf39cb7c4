"""Weights folders: save/load round trip, integrity checks, path safety, lookup precedence."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from LiverTumorAILib import __version__, weights  # noqa: E402
from LiverTumorAILib.errors import WeightsError  # noqa: E402
from LiverTumorAILib.models import registry  # noqa: E402

SMALL = {"base_channels": 4, "depth": 2}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP barrier stalls on a busy 2-core box (CONTRIBUTING)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _model():
    torch.manual_seed(0)
    m = registry.build_model("tam-unet", SMALL)
    # make BatchNorm running stats non-trivial so they are part of the round trip
    m.train()
    with torch.no_grad():
        m(torch.randn(2, 1, 32, 32))
    return m.eval()


def _save(folder: Path, dtype="float32", name="tam-unet", **extra) -> Path:
    manifest = {"name": name, "task": "segmentation", "training_data": {"synthetic": True}, **extra}
    return weights.save_weights(_model(), folder, manifest, dtype=dtype)


def _edit_manifest(folder: Path, **changes) -> None:
    path = folder / "manifest.json"
    m = json.loads(path.read_text(encoding="utf-8"))
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    path.write_text(json.dumps(m))


@pytest.fixture()
def x():
    return torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(3))


def test_round_trip_fp32_identical(tmp_path, x):
    ref = _model()
    folder = _save(tmp_path / "w")
    assert folder == tmp_path / "w"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.safetensors"]  # no temp files left
    model, manifest = weights.load_weights(folder)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))
    assert manifest["format"] == "livertumorai-weights/1"
    assert manifest["architecture"] == "tam-unet" and manifest["config"]["base_channels"] == 4
    assert manifest["code_version"].startswith(__version__)
    assert manifest["dtype"] == "float32" and len(manifest["sha256"]) == 64 and manifest["created"]


def test_save_unwraps_and_handles_channels_last(tmp_path, x):
    ref = _model()
    wrapped = torch.nn.DataParallel(_model().to(memory_format=torch.channels_last))
    weights.save_weights(wrapped, tmp_path / "w", {"name": "tam-unet"}, dtype="float32")
    model, _ = weights.load_weights(tmp_path / "w")
    with torch.inference_mode():
        assert torch.equal(model(x), ref(x))


def test_round_trip_fp16_close(tmp_path, x):
    ref = _model()
    model, manifest = weights.load_weights(_save(tmp_path / "w", dtype="float16"))
    assert manifest["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref(x), atol=2e-2, rtol=2e-2)


def test_save_does_not_mutate_manifest_and_needs_name(tmp_path):
    manifest = {"name": "tam-unet"}
    weights.save_weights(_model(), tmp_path / "a", manifest)
    assert manifest == {"name": "tam-unet"}
    with pytest.raises(WeightsError, match="name"):
        weights.save_weights(_model(), tmp_path / "b", {})


def test_tampered_weights_refused(tmp_path):
    folder = _save(tmp_path / "w")
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        weights.load_weights(folder)


def test_truncated_weights_refused(tmp_path):
    folder = _save(tmp_path / "w")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(WeightsError, match="truncated"):
        weights.verify_manifest(folder)
    _edit_manifest(folder, size_bytes=None)  # older manifest without size: the hash still catches it
    with pytest.raises(WeightsError, match="sha256"):
        weights.load_weights(folder)


def test_missing_manifest_and_folder(tmp_path):
    folder = _save(tmp_path / "w")
    (folder / "manifest.json").unlink()
    with pytest.raises(WeightsError, match="missing manifest"):
        weights.load_weights(folder)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.load_weights(tmp_path / "nope")


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"a": 1, "a": 2}'])
def test_bad_json_refused(tmp_path, text):
    folder = _save(tmp_path / "w")
    (folder / "manifest.json").write_text(text)
    with pytest.raises(WeightsError, match="manifest"):
        weights.verify_manifest(folder)


def test_missing_required_key(tmp_path):
    folder = _save(tmp_path / "w")
    _edit_manifest(folder, sha256=None)
    with pytest.raises(WeightsError, match="sha256"):
        weights.verify_manifest(folder)


@pytest.mark.parametrize("bad", ["../x.safetensors", "/etc/passwd", "sub/model.safetensors", "..", "a\\b", "C:model"])
def test_unsafe_weights_file_refused(tmp_path, bad):
    folder = _save(tmp_path / "w")
    _edit_manifest(folder, weights_file=bad)
    with pytest.raises(WeightsError, match="plain file name"):
        weights.load_weights(folder)


def test_symlink_out_of_folder_refused(tmp_path):
    folder = _save(tmp_path / "w")
    outside = tmp_path / "outside.safetensors"
    os.replace(folder / "model.safetensors", outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(WeightsError, match="outside"):
        weights.load_weights(folder)


def test_unknown_architecture_refused(tmp_path):
    folder = _save(tmp_path / "w")
    _edit_manifest(folder, architecture="evil-net")
    with pytest.raises(WeightsError, match="unknown architecture"):
        weights.load_weights(folder)


def test_shape_mismatch_refused(tmp_path):
    folder = _save(tmp_path / "w")
    _edit_manifest(folder, config={**registry.default_config("tam-unet"), "base_channels": 8, "depth": 2})
    with pytest.raises(WeightsError, match="shape mismatch"):
        weights.load_weights(folder)


def test_pickle_never_loaded(tmp_path, monkeypatch):
    """A pickled checkpoint with a valid hash is refused as not-safetensors, and torch.load is never called."""
    folder = _save(tmp_path / "w")
    path = folder / "model.safetensors"
    torch.save(_model().state_dict(), path)
    data = path.read_bytes()
    import hashlib

    _edit_manifest(folder, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))

    def _forbidden(*a, **k):
        raise AssertionError("torch.load called")

    monkeypatch.setattr(torch, "load", _forbidden)
    with pytest.raises(WeightsError, match="not a valid safetensors"):
        weights.load_weights(folder)


def test_is_synthetic():
    assert weights.is_synthetic({"training_data": {"synthetic": True}})
    assert weights.is_synthetic({"version": "demo-0.1"})
    assert not weights.is_synthetic({"training_data": {"synthetic": False}, "version": "1.0"})
    assert not weights.is_synthetic({})


@pytest.fixture
def bundled(tmp_path, monkeypatch) -> Path:
    """A bundled weights root holding tam-unet and fusion, and no $LIVERTUMORAI_MODELS."""
    root = tmp_path / "bundled"
    _save(root / "tam-unet")
    _save(root / "fusion", name="fusion")
    monkeypatch.setattr(weights, "bundled_models_dirs", lambda: [root])
    monkeypatch.delenv(weights.ENV_MODELS, raising=False)
    return root


def test_find_weights_precedence(tmp_path, monkeypatch, bundled):
    assert weights.find_weights("tam-unet") == bundled / "tam-unet"

    env = tmp_path / "env"
    _save(env / "my-tam", name="tam-unet")
    monkeypatch.setenv(weights.ENV_MODELS, str(env))
    assert weights.find_weights("tam-unet") == env / "my-tam"  # env beats bundled
    assert weights.find_weights("fusion") == bundled / "fusion"  # falls through for others

    single = _save(tmp_path / "single", name="tam-unet")
    assert weights.find_weights("tam-unet", single) == single  # --weights beats env
    assert weights.find_weights("fusion", single) == bundled / "fusion"  # only overrides its own name

    many = tmp_path / "many"
    _save(many / "x", name="fusion")
    assert weights.find_weights("fusion", many) == many / "x"

    with pytest.raises(WeightsError, match="no weights for model 'localizer'"):
        weights.find_weights("localizer", many)
    with pytest.raises(WeightsError, match="does not exist"):
        weights.find_weights("fusion", tmp_path / "missing")

    _save(many / "y", name="fusion")
    with pytest.raises(WeightsError, match="several"):
        weights.find_weights("fusion", many)


def test_fallback_warning_names_folder_and_model(tmp_path, monkeypatch, bundled):
    """A model the chosen folder lacks comes from the bundled weights: say which, and from where."""
    mine = tmp_path / "mine"
    _save(mine / "t", name="tam-unet")

    assert weights.fallback_warning("fusion") is None  # nothing chosen: the bundled weights are expected
    assert weights.fallback_warning("tam-unet", mine) is None
    said = weights.fallback_warning("fusion", mine)
    assert said == (f"the --weights folder {mine} has no 'fusion' weights: the bundled demo weights "
                    f"({bundled / 'fusion'}) were used for fusion instead")

    monkeypatch.setenv(weights.ENV_MODELS, str(mine))
    assert weights.fallback_warning("tam-unet") is None
    assert f"${weights.ENV_MODELS} {mine} has no 'fusion' weights" in weights.fallback_warning("fusion")
    other = _save(tmp_path / "other", name="tam-unet")
    env_used = weights.fallback_warning("fusion", other)  # --weights lacks it, $LIVERTUMORAI_MODELS lacks it too
    assert f"folder {other} has no 'fusion' weights" in env_used and "bundled demo" in env_used
    _save(mine / "f", name="fusion")
    env_used = weights.fallback_warning("fusion", other)
    assert f"the weights from ${weights.ENV_MODELS} ({mine / 'f'})" in env_used


def test_fallback_warning_searches_each_folder_once(tmp_path, monkeypatch, bundled):
    """The chosen folder is read once: its miss is not searched again on the way to the fallback."""
    mine, env = tmp_path / "mine", tmp_path / "env"
    _save(mine / "t", name="tam-unet")
    _save(env / "t", name="tam-unet")
    searched: list[Path] = []
    real = weights._search_dir

    def search(name, base, label):
        searched.append(Path(base))
        return real(name, base, label)

    monkeypatch.setattr(weights, "_search_dir", search)
    used = f"the bundled demo weights ({bundled / 'fusion'}) were used for fusion instead"
    said = weights.fallback_warning("fusion", mine)
    assert said == f"the --weights folder {mine} has no 'fusion' weights: {used}"
    assert searched == [mine]
    searched.clear()
    monkeypatch.setenv(weights.ENV_MODELS, str(env))
    said = weights.fallback_warning("fusion")
    assert said == f"${weights.ENV_MODELS} {env} has no 'fusion' weights: {used}"
    assert searched == [env]
    searched.clear()
    said = weights.fallback_warning("fusion", mine)  # --weights lacks it, then $LIVERTUMORAI_MODELS lacks it
    assert said == f"the --weights folder {mine} has no 'fusion' weights: {used}"
    assert searched == [mine, env]
    searched.clear()
    assert weights.fallback_warning("tam-unet", mine) is None and searched == [mine]
