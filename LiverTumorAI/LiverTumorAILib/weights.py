"""Model weights on disk: a folder with ``manifest.json`` + one ``.safetensors`` file.

Why this shape (see CONTRIBUTING.md "Weights folder"):

* safetensors only, never ``torch.load``: a weights folder may come from anywhere
  (``--weights DIR``), and unpickling runs arbitrary code.
* The manifest records the sha256 *and size* of the weights file. Loading reads the file
  once, checks size (-> "truncated") and hash (-> "tampered") on those bytes, and only then
  parses the same bytes as tensors, so there is no window between check and use.
* ``weights_file`` must be a plain file name inside the folder: a manifest can never make
  us read ``../../etc/passwd`` or follow a symlink out of the folder.
* Writes are atomic (temp files in the folder, then ``os.replace``): an interrupted save
  leaves the previous weights intact, or a hash mismatch, never a silently half-written file.

torch, safetensors and the model registry are imported inside the functions, so this
module is cheap to import (the CLI imports it to list weights).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from LiverTumorAILib import __version__
from LiverTumorAILib.errors import WeightsError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

FORMAT = "livertumorai-weights/1"
MANIFEST_NAME = "manifest.json"
DEFAULT_WEIGHTS_FILE = "model.safetensors"
ENV_MODELS = "LIVERTUMORAI_MODELS"
REQUIRED_KEYS = ("format", "name", "architecture", "config", "weights_file", "sha256")
SUPPORTED_DTYPES = ("float32", "float16", "bfloat16")
#: Refuse absurd files before reading them (a manifest is a few kB, weights are MBs).
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_WEIGHTS_BYTES = 4 * 1024**3

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- helpers
def _repo_root() -> Path:
    """Source checkout root: this file is ``<root>/LiverTumorAI/LiverTumorAILib/weights.py``."""
    return Path(__file__).resolve().parents[2]


def _git_short_sha() -> Optional[str]:
    root = _repo_root()
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{4,40}", sha) else None


def code_version() -> str:
    """``__version__`` plus ``+<git short sha>`` when running from a git checkout."""
    sha = _git_short_sha()
    return f"{__version__}+{sha}" if sha else __version__


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    """json object hook: a manifest with a key twice is ambiguous, so it is refused."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_manifest_json(folder: Path) -> dict:
    """Parse ``folder/manifest.json`` defensively (size limit, JSON errors, object type)."""
    path = folder / MANIFEST_NAME
    if not folder.exists():
        raise WeightsError(f"{folder}: weights folder does not exist")
    if not folder.is_dir():
        raise WeightsError(f"{folder}: not a folder (a weights folder holds {MANIFEST_NAME} + .safetensors)")
    if not path.is_file():
        raise WeightsError(f"{path}: missing manifest (not a weights folder)")
    try:
        size = path.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise WeightsError(f"{path}: manifest is {size} bytes, refusing anything over {MAX_MANIFEST_BYTES}")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WeightsError(f"{path}: manifest is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read manifest ({exc.strerror or exc})") from None
    try:
        manifest = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except (json.JSONDecodeError, ValueError) as exc:
        raise WeightsError(f"{path}: bad JSON in manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise WeightsError(f"{path}: manifest must be a JSON object, got {type(manifest).__name__}")
    return manifest


def _check_weights_file_name(folder: Path, name: Any) -> Path:
    """Resolve ``weights_file`` to a regular file strictly inside ``folder``."""
    where = folder / MANIFEST_NAME
    if not isinstance(name, str) or not name:
        raise WeightsError(f"{where}: 'weights_file' must be a non-empty file name")
    if (
        "/" in name
        or "\\" in name
        or "\x00" in name
        or name in (".", "..")
        or os.path.isabs(name)
        or re.match(r"^[A-Za-z]:", name)  # Windows drive ("C:x") even on POSIX
    ):
        raise WeightsError(
            f"{where}: 'weights_file' {name!r} must be a plain file name inside the folder"
        )
    path = folder / name
    try:
        real_folder = folder.resolve(strict=True)
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise WeightsError(f"{path}: weights file named in the manifest is missing") from None
    if real.parent != real_folder:
        raise WeightsError(f"{path}: weights file is a link pointing outside the weights folder")
    if not real.is_file():
        raise WeightsError(f"{path}: weights file is not a regular file")
    return path


def _verify(folder: PathLike) -> tuple[dict, bytes]:
    """Verify a weights folder; return the manifest and the verified weights bytes."""
    folder = Path(folder)
    manifest = _read_manifest_json(folder)
    where = folder / MANIFEST_NAME
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise WeightsError(f"{where}: manifest lacks required key(s) {', '.join(missing)}")
    if manifest["format"] != FORMAT:
        raise WeightsError(f"{where}: unsupported format {manifest['format']!r} (this version reads {FORMAT!r})")
    for key in ("name", "architecture"):
        if not isinstance(manifest[key], str) or not manifest[key]:
            raise WeightsError(f"{where}: {key!r} must be a non-empty string")
    if not isinstance(manifest["config"], dict):
        raise WeightsError(f"{where}: 'config' must be a JSON object")
    sha = manifest["sha256"]
    if not isinstance(sha, str) or not _HEX64.match(sha):
        raise WeightsError(f"{where}: 'sha256' must be 64 hex digits")
    path = _check_weights_file_name(folder, manifest["weights_file"])
    try:
        size = path.stat().st_size
        if size > MAX_WEIGHTS_BYTES:
            raise WeightsError(f"{path}: weights file is {size} bytes, refusing anything over {MAX_WEIGHTS_BYTES}")
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read weights file ({exc.strerror or exc})") from None
    expected_size = manifest.get("size_bytes")
    if isinstance(expected_size, int) and len(data) != expected_size:
        kind = "truncated" if len(data) < expected_size else "has extra bytes"
        raise WeightsError(
            f"{path}: weights file {kind} ({len(data)} bytes, manifest says {expected_size})"
        )
    if not hmac.compare_digest(_sha256_bytes(data), sha.lower()):
        raise WeightsError(f"{path}: sha256 mismatch - weights file is corrupted or was tampered with")
    return manifest, data


# --------------------------------------------------------------------------- public API
def verify_manifest(folder: PathLike) -> dict:
    """Check a weights folder without building a model; return its manifest.

    Checks: manifest present, valid JSON object, required keys, known format, a safe
    ``weights_file`` (plain name, no links out of the folder), file size and sha256.
    Raises `WeightsError` naming the file and the problem.
    """
    manifest, _ = _verify(folder)
    return manifest


def save_weights(model: nn.Module, folder: PathLike, manifest: dict, dtype: str = "float16") -> Path:
    """Write ``model``'s state dict + manifest into ``folder`` (created if needed); return ``folder``.

    ``manifest`` needs at least ``name``. For a model made by ``models.registry.build_model``
    the ``architecture`` and ``config`` it was built with (its ``livertumorai_architecture``
    / ``livertumorai_config`` attributes) are written, so the manifest always rebuilds this
    exact model; otherwise the manifest must give them. Format, weights_file, sha256, size_bytes, dtype,
    created and code_version are filled in here (the caller's dict is not modified).
    Floating tensors are stored as ``dtype`` (float16 halves the bundle; load casts back
    to float32); integer buffers (BatchNorm's counters) are kept as they are.
    """
    import torch
    from safetensors.torch import save as st_save

    if dtype not in SUPPORTED_DTYPES:
        raise WeightsError(f"save_weights: dtype {dtype!r} not one of {', '.join(SUPPORTED_DTYPES)}")
    folder = Path(folder)
    model = unwrap_model(model)
    out = dict(manifest)
    built_arch = getattr(model, "livertumorai_architecture", None)
    built_cfg = getattr(model, "livertumorai_config", None)
    if built_arch is not None:
        if out.get("architecture", built_arch) != built_arch:
            raise WeightsError(
                f"{folder}: manifest architecture {out['architecture']!r} but the model was built as {built_arch!r}"
            )
        out["architecture"] = built_arch
    if isinstance(built_cfg, dict):
        # the config the model was actually built with (defaults + derived keys) is the truth:
        # load_weights rebuilds from it, and the engine gathers slices from its ct_offsets
        out["config"] = json.loads(json.dumps(built_cfg))
    for key in ("name", "architecture"):
        if not isinstance(out.get(key), str) or not out[key]:
            raise WeightsError(f"{folder}: save_weights needs manifest[{key!r}] (a non-empty string)")
    if not isinstance(out.get("config"), dict):
        raise WeightsError(f"{folder}: save_weights needs manifest['config'] (the model's config dict)")
    weights_file = out.get("weights_file", DEFAULT_WEIGHTS_FILE)
    if not isinstance(weights_file, str) or Path(weights_file).name != weights_file or weights_file in ("", ".", ".."):
        raise WeightsError(f"{folder}: 'weights_file' {weights_file!r} must be a plain file name")

    target = getattr(torch, dtype)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        t = value.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(target)
            if not torch.isfinite(t).all():
                raise WeightsError(f"{folder}: tensor {key!r} is not finite as {dtype} (overflow?); save as float32")
        tensors[key] = t.contiguous().clone()  # clone: safetensors refuses shared storage
    data = st_save(tensors, metadata={"format": FORMAT, "architecture": out["architecture"]})

    out.update(
        format=FORMAT,
        weights_file=weights_file,
        sha256=_sha256_bytes(data),
        size_bytes=len(data),
        dtype=dtype,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version(),
    )
    try:
        text = json.dumps(out, indent=2, sort_keys=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"{folder}: manifest is not JSON-serialisable ({exc})") from None

    try:
        folder.mkdir(parents=True, exist_ok=True)
        _atomic_write(folder / weights_file, data)
        _atomic_write(folder / MANIFEST_NAME, text.encode("utf-8"))
    except OSError as exc:
        raise WeightsError(f"{folder}: cannot write weights ({exc.strerror or exc})") from None
    return folder


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel / torch.compile wrappers,
    so saved keys never carry ``module.`` or ``_orig_mod.`` prefixes."""
    from torch import nn

    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_weights(folder: PathLike, device: Union[str, torch.device] = "cpu") -> tuple[nn.Module, dict]:
    """Verify, build and load a model; return ``(model in eval mode on device, manifest)``.

    The model is built by ``models.registry.build_model(manifest["architecture"],
    manifest["config"])``; tensors are parsed from the *verified* bytes with safetensors,
    cast to float32 and loaded with ``strict=True`` after a key/shape check that names the
    first mismatches.
    """
    import torch
    from safetensors.torch import load as st_load

    from LiverTumorAILib.models import registry

    folder = Path(folder)
    manifest, data = _verify(folder)
    wpath = folder / manifest["weights_file"]
    arch = manifest["architecture"]
    if arch not in registry.ARCHITECTURES:
        raise WeightsError(
            f"{folder / MANIFEST_NAME}: unknown architecture {arch!r} "
            f"(known: {', '.join(sorted(registry.ARCHITECTURES))})"
        )
    try:
        model = registry.build_model(arch, manifest["config"])
    except WeightsError as exc:
        raise WeightsError(f"{folder / MANIFEST_NAME}: {exc}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise WeightsError(f"{folder / MANIFEST_NAME}: cannot build {arch!r} from its config ({exc})") from None

    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
        raise WeightsError(f"{wpath}: not a valid safetensors file ({exc})") from None

    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"{wpath}: does not match architecture {arch!r}: "
            f"{len(missing)} missing key(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    for key, ref in expected.items():
        t = tensors[key]
        if tuple(t.shape) != tuple(ref.shape):
            raise WeightsError(
                f"{wpath}: shape mismatch for {key!r}: file {tuple(t.shape)}, model {tuple(ref.shape)}"
            )
        if t.is_floating_point() != ref.is_floating_point():
            raise WeightsError(f"{wpath}: dtype mismatch for {key!r}: file {t.dtype}, model {ref.dtype}")
        if t.is_floating_point():
            t = t.to(torch.float32)
            if not torch.isfinite(t).all():
                raise WeightsError(f"{wpath}: tensor {key!r} has NaN/Inf values")
        tensors[key] = t.to(ref.dtype)
    model.load_state_dict(tensors, strict=True)
    model.to(torch.device(device)).eval()
    return model, manifest


def is_synthetic(manifest: dict) -> bool:
    """True when the weights were trained on synthetic data (the demo bundle).

    Reads ``training_data.synthetic``; a ``version`` starting with ``demo`` also counts,
    so a demo bundle whose training_data block was lost still carries the notice.
    """
    td = manifest.get("training_data")
    if isinstance(td, dict) and bool(td.get("synthetic", False)):
        return True
    version = manifest.get("version")
    return isinstance(version, str) and version.lower().startswith("demo")


def _manifest_name(folder: Path) -> Optional[str]:
    """The ``name`` in ``folder/manifest.json``, or None if absent/unreadable (no hashing)."""
    try:
        m = _read_manifest_json(folder)
    except WeightsError:
        return None
    name = m.get("name")
    return name if isinstance(name, str) else None


def _search_dir(name: str, base: Path, label: str) -> Optional[Path]:
    """Look for weights ``name`` in ``base``: itself a weights folder, or a folder of them.

    A single weights folder only answers for its own ``name`` (it overrides that entry and
    leaves the others to the next place). In a folder of folders the one whose manifest
    name matches wins; if several match, a sub-folder called ``name`` breaks the tie,
    else it is an error. A sub-folder called ``name`` whose manifest cannot be read is an
    error too (better than silently falling back to other weights).
    """
    if not base.exists():
        raise WeightsError(f"{base}: {label} does not exist")
    if not base.is_dir():
        raise WeightsError(f"{base}: {label} is not a folder")
    if (base / MANIFEST_NAME).is_file():
        found = _manifest_name(base)
        if found is None:
            raise WeightsError(f"{base / MANIFEST_NAME}: unreadable manifest (bad JSON or no 'name')")
        return base if found == name else None
    matches: list[Path] = []
    for sub in sorted(p for p in base.iterdir() if p.is_dir()):
        if not (sub / MANIFEST_NAME).is_file():
            continue
        found = _manifest_name(sub)
        if found is None and sub.name == name:
            raise WeightsError(f"{sub / MANIFEST_NAME}: unreadable manifest (bad JSON or no 'name')")
        if found == name:
            matches.append(sub)
    if len(matches) > 1:
        exact = [m for m in matches if m.name == name]
        if len(exact) == 1:
            return exact[0]
        raise WeightsError(
            f"{base}: several weights folders are named {name!r}: {', '.join(m.name for m in matches)}"
        )
    return matches[0] if matches else None


def bundled_models_dirs() -> list[Path]:
    """Where bundled weights may live: ``<repo>/Resources/Models`` (source checkout) and
    ``LiverTumorAI/Resources/Models`` (the module's own resources, as installed by Slicer)."""
    here = Path(__file__).resolve()
    return [here.parents[2] / "Resources" / "Models", here.parents[1] / "Resources" / "Models"]


def bundled_model_dir(name: str) -> Optional[Path]:
    """The bundled weights folder of model `name` (holding its manifest), or None when not bundled."""
    for base in bundled_models_dirs():
        if (base / name / MANIFEST_NAME).is_file():
            return base / name
    return None


def _chosen_dirs(weights_dir: Optional[PathLike]) -> list[tuple[Path, str]]:
    """The folders searched before the bundled weights, in order, each with its name for
    messages: ``weights_dir`` (``--weights``), then ``$LIVERTUMORAI_MODELS``."""
    places: list[tuple[Path, str]] = []
    if weights_dir is not None:
        places.append((Path(weights_dir), "--weights folder"))
    env = os.environ.get(ENV_MODELS)
    if env:
        places.append((Path(env), f"${ENV_MODELS}"))
    return places


def find_weights(name: str, weights_dir: Optional[PathLike] = None) -> Path:
    """Return the weights folder for ``name``.

    Precedence: ``weights_dir`` (one weights folder whose manifest name is ``name``, or a
    folder of weights folders), then ``$LIVERTUMORAI_MODELS`` (same two forms), then the
    bundled ``Resources/Models/<name>/``. The folder is not verified here; ``load_weights``
    / ``verify_manifest`` do that.
    """
    return _find_in(name, _chosen_dirs(weights_dir), [])


def _find_in(name: str, places: list[tuple[Path, str]], looked: list[str]) -> Path:
    """`find_weights` from ``places`` (see `_chosen_dirs`) on; ``looked``: folders already searched in vain."""
    for base, label in places:
        hit = _search_dir(name, base, label)
        if hit is not None:
            return hit
        looked.append(str(base))
    for models_dir in bundled_models_dirs():
        cand = models_dir / name
        if (cand / MANIFEST_NAME).is_file():
            return cand
        looked.append(str(cand))
    raise WeightsError(
        f"no weights for model {name!r}: no {MANIFEST_NAME} with that name in {'; '.join(looked)} "
        f"(pass --weights DIR or set {ENV_MODELS})"
    )


def fallback_warning(name: str, weights_dir: Optional[PathLike] = None) -> Optional[str]:
    """A warning when the folder the user chose (``weights_dir``, i.e. ``--weights``, else
    ``$LIVERTUMORAI_MODELS``) holds no weights ``name``, so that `find_weights` fell back to the
    next place (usually the bundled demo weights): results must never silently come from other
    weights than the ones asked for. None when the chosen folder has them, or none was chosen."""
    places = _chosen_dirs(weights_dir)
    if not places:
        return None
    (base, label), rest = places[0], places[1:]
    where = f"the {label}" if weights_dir is not None else label
    try:
        if _search_dir(name, base, where) is not None:
            return None
        used = _find_in(name, rest, [str(base)])  # the chosen folder lacks it: where find_weights goes next
    except WeightsError:
        return None  # nothing usable anywhere: loading the model itself says so
    if used.parent in bundled_models_dirs():
        try:
            demo = is_synthetic(_read_manifest_json(used))
        except WeightsError:
            demo = False
        what = "the bundled demo weights" if demo else "the bundled weights"
    else:
        what = f"the weights from ${ENV_MODELS}"
    return f"{where} {base} has no {name!r} weights: {what} ({used}) were used for {name} instead"
