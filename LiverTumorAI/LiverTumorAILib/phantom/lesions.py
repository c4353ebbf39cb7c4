"""Focal liver lesions: sampling, shape and appearance per type.

Count 0-6 per case (P(0) = 0.1). Diameter: piecewise log-uniform, a third in 5-15 mm
and two thirds in 15-60 mm (equivalent-sphere diameter of the actual shape, computed
numerically, so `diameter_mm` matches the rendered volume up to voxelisation).
Shape: star-shaped around the centre in an ellipsoid frame (axis ratios 0.75-1.3,
random orientation); the radius is modulated by a few angular waves: smooth for cysts,
lobulated for FNH/HCC/metastases, spiculated and irregular for cholangiocarcinoma.
Lesions are clipped to the liver envelope, placed mostly deep in the liver (15 %
subcapsular) and at least 4 mm apart (bounding spheres), so instances never touch.

Appearance, portal-venous CT (L = liver HU, B = portal blood HU), and MRI (T2, T1
relative to liver = 100 / 175); ranges overlap between types on purpose:
- cyst: 0-20 HU (15 %: 15-35, proteinaceous), homogeneous, sharp; T2 550-850, T1 25-60.
- haemangioma: hypodense 30-65 HU with 4-8 discontinuous peripheral nodules at 0.75-1.0 B
  and centripetal fill-in (small ones 40 % flash-filling at 0.75-0.95 B); T2 400-650.
- FNH: L-5..L+20, lobulated, central stellate scar L-50..L-25 (70 % if >= 20 mm, 30 %
  below); T2 1.0-1.4 x liver with a bright scar; T1 near liver.
- HCC: washout L-45..L-10, mosaic texture, enhancing capsule L+10..L+40 (70 %),
  necrosis when > 30 mm; T2 150-260; T1 80-190; more frequent in cirrhotic livers.
- metastasis: hypodense L-75..L-30 (12 % hypervascular L+5..L+30), enhancing rim
  1.5-5 mm, necrotic centre 10-30 HU (70 % if >= 20 mm); T2 150-300 (centre 300-500).
- cholangiocarcinoma: hypodense L-55..L-20, irregular/spiculated, slightly enhancing
  fibrous centre, capsular retraction of the liver surface when subcapsular, dilated
  bile ducts upstream (label 1, not tumour); T2 160-280.

Plain CT look (opt-in, `plain_lesions` = fraction of the non-cyst lesions, default 0; cysts are
flat already): the lesion keeps its type, shape and MRI but its CT is one flat level, L-70..L-15 (80 %) or L+15..L+45 (20 %), with
only the fine texture. Many real lesions look like that on one phase (small metastases, HCC
without capsule); a network trained only on the rims, capsules and nodules above learns to
mark only a lesion's dark core, so training mixes some in. Drawn only when asked for, so a
case made without it is unchanged.

Subtle CT look (opt-in, `subtle_lesions` = fraction of the non-cyst lesions, default 0): half
near-isodense, a thin bright rim (L+5..L+15, 1.5-3 mm) around a faint core (L-35..L-10), whose
mean is within a few HU of the liver; half a flat bright ball (L+20..L+50), which a network that
has seen only tubular bright vessels and nodular haemangiomas dismisses as a vessel. Real
portal-phase scans show both (small metastases, flash-filling haemangiomas, hypervascular
lesions); drawn after `plain`, so a case made without it is unchanged.

Bright CT look (opt-in, `bright_lesions` = fraction of the non-cyst lesions, default 0): only the
flat bright ball, L+20..L+80 (up to a flash-filling haemangioma's level), drawn after `subtle`.
Why: the CT-only networks trained with `subtle` still gave 0.7-0.8 peak probability, or none, to
15-17 mm bright round lesions on the independent generator (README), treating them as vessel
cross-sections; training cases made with this give them many more such lesions to learn from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .grid import Grid, Patient
from .render import RenderCtx, Structure
from .shapes import Coords, Vec3, capsule, rotation, to_local, vec

TYPES = ("cyst", "haemangioma", "fnh", "hcc", "metastasis", "cholangiocarcinoma")
CLASS = {"cyst": "benign", "haemangioma": "benign", "fnh": "benign",
         "hcc": "malignant", "metastasis": "malignant", "cholangiocarcinoma": "malignant"}
WEIGHTS = {"cyst": 0.2, "haemangioma": 0.17, "fnh": 0.13, "hcc": 0.17, "metastasis": 0.2, "cholangiocarcinoma": 0.13}

_FIB = None


def _fibonacci(n: int = 800) -> np.ndarray:
    global _FIB
    if _FIB is None:
        i = np.arange(n) + 0.5
        phi = np.arccos(1 - 2 * i / n)
        th = np.pi * (1 + 5 ** 0.5) * i
        _FIB = np.stack([np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)], 1)
    return _FIB


@dataclass
class Lesion:
    id: int
    type: str
    diameter_mm: float
    centre: Vec3  # anatomical frame
    rot: np.ndarray
    axes: Vec3  # product 1
    waves: List[Tuple[Vec3, float, float]]  # (frequency vector, amplitude, phase)
    r0: float
    bound: float  # bounding radius (mm)
    look: Dict[str, float] = field(default_factory=dict)

    @property
    def cls(self) -> str:
        return CLASS[self.type]

    def radial(self, ux: np.ndarray, uy: np.ndarray, uz: np.ndarray) -> np.ndarray:
        r = np.ones_like(ux)
        for (kx, ky, kz), amp, ph in self.waves:
            r = r + amp * np.cos(ux * kx + uy * ky + uz * kz + ph)
        return r * self.r0

    def local(self, q: Coords) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Normalised radius t = rho / R(u) (1 on the surface), rho, R and unit direction parts."""
        x, y, z = to_local(q, self.centre, self.rot)
        x, y, z = x / self.axes[0], y / self.axes[1], z / self.axes[2]
        rho = np.sqrt(x * x + y * y + z * z) + 1e-6
        ux, uy, uz = x / rho, y / rho, z / rho
        big_r = self.radial(ux, uy, uz)
        return rho / big_r, rho, big_r, (ux, uy, uz), None  # type: ignore[return-value]

    def sdf(self, q: Coords) -> np.ndarray:
        _, rho, big_r, _, _ = self.local(q)
        return (rho - big_r) * min(self.axes)


def _diameter(rng: np.random.Generator, lo: float = 5.0, hi: float = 60.0) -> float:
    if rng.random() < 1 / 3:
        return float(np.exp(rng.uniform(np.log(lo), np.log(15.0))))
    return float(np.exp(rng.uniform(np.log(15.0), np.log(hi))))


def _shape(rng: np.random.Generator, kind: str, diameter: float) -> Tuple[np.ndarray, Vec3, list, float, float]:
    u = rng.uniform
    rot = rotation(*rng.uniform(-180, 180, 3))
    e = {"cyst": 0.15, "haemangioma": 0.25, "fnh": 0.2, "hcc": 0.2, "metastasis": 0.2, "cholangiocarcinoma": 0.35}[kind]
    ax = np.exp(rng.uniform(-e, e, 3))
    ax = ax / np.prod(ax) ** (1 / 3)
    lob = {"cyst": (0.0, 0.04, 1), "haemangioma": (0.02, 0.08, 2), "fnh": (0.04, 0.12, 3), "hcc": (0.03, 0.1, 3),
           "metastasis": (0.03, 0.12, 3), "cholangiocarcinoma": (0.08, 0.16, 4)}[kind]
    waves = []
    for _ in range(lob[2]):
        d = rng.normal(size=3)
        d = d / np.linalg.norm(d) * u(1.5, 3.5)
        waves.append((vec(d), float(u(lob[0], lob[1])), float(u(0, 2 * np.pi))))
    if kind == "cholangiocarcinoma" or (kind == "metastasis" and rng.random() < 0.3):
        for _ in range(int(rng.integers(3, 7))):  # spicules / irregular margin
            d = rng.normal(size=3)
            d = d / np.linalg.norm(d) * u(5, 9)
            waves.append((vec(d), float(u(0.03, 0.08)), float(u(0, 2 * np.pi))))
    # normalise so the equivalent-sphere diameter is `diameter`
    f = _fibonacci()
    r = np.ones(len(f))
    for (kx, ky, kz), amp, ph in waves:
        r = r + amp * np.cos(f[:, 0] * kx + f[:, 1] * ky + f[:, 2] * kz + ph)
    vol_unit = float(np.mean(r ** 3)) * 4 / 3 * np.pi
    r0 = (np.pi / 6 * diameter ** 3 / vol_unit) ** (1 / 3)
    bound = float(r0 * r.max() * ax.max() * 1.08)
    return rot, vec(ax), waves, float(r0), bound


def _look(rng: np.random.Generator, kind: str, diameter: float, cirrhotic: bool) -> Dict[str, float]:
    """Appearance parameters drawn once per lesion (used by both CT and MRI)."""
    u = rng.uniform
    lk: Dict[str, float] = {"tex_sigma": u(1.0, 3.0), "tex_ct": u(2, 6), "tex_mr": u(0.03, 0.08)}
    if kind == "cyst":
        lk.update(ct=u(15, 35) if rng.random() < 0.15 else u(0, 20), t2=u(550, 850), t1=u(25, 60), tex_ct=u(0.5, 2.5))
    elif kind == "haemangioma":
        flash = diameter < 15 and rng.random() < 0.4
        lk.update(ct_hypo=u(30, 65), nod=u(0.75, 1.0), fill=1.0 if flash else u(0.0, 0.8), flash=float(flash),
                  flash_level=u(0.75, 0.95), n_nod=float(rng.integers(4, 9)), nod_size=u(0.3, 0.5),
                  t2=u(400, 650), t1=u(50, 85))
    elif kind == "fnh":
        scar = rng.random() < (0.7 if diameter >= 20 else 0.3)
        lk.update(ct_rel=u(-5, 20), scar=float(scar), scar_r=u(0.12, 0.25), scar_ct=-u(25, 50), t2_rel=u(1.0, 1.4),
                  t1_rel=u(0.9, 1.05), scar_t2=u(250, 400), n_spokes=float(rng.integers(3, 6)))
    elif kind == "hcc":
        lk.update(ct_rel=-u(10, 45), mosaic=u(8, 25), capsule=float(rng.random() < 0.7), cap_t=u(1.0, 2.5),
                  cap_ct=u(10, 40), necrosis=float(diameter > 30 and rng.random() < 0.6), nec_r=u(0.2, 0.45),
                  t2=u(150, 260), t1=u(80, 190))
    elif kind == "metastasis":
        hyper = rng.random() < 0.12
        lk.update(ct_rel=u(5, 30) if hyper else -u(30, 75), rim_t=u(1.5, 5.0), rim_ct=u(-15, 20),
                  necrosis=float(diameter >= 20 and rng.random() < 0.7), nec_r=u(0.3, 0.6), nec_ct=u(10, 30),
                  t2=u(150, 300), t2_nec=u(300, 500), t1=u(60, 110))
    else:
        lk.update(ct_rel=-u(20, 55), centre_ct=u(5, 20), t2=u(160, 280), t1=u(70, 110), hetero=u(5, 15))
    if cirrhotic and kind == "hcc":
        lk["ct_rel"] -= u(0, 10)
    return lk


def _appearance(les: Lesion, nod_dirs: np.ndarray, spokes: np.ndarray) -> Callable:
    lk, kind = les.look, les.type

    def value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        mod = ctx.modality
        t, rho, big_r, (ux, uy, uz), _ = les.local(q)
        depth = (big_r - rho) * min(les.axes)  # mm inside the surface
        liver = float(ctx.tissue("liver"))
        blood = float(ctx.tissue("portal"))
        tex = ctx.smooth_noise(d.shape, lk["tex_sigma"])
        if mod == "ct":
            tex_amp = lk["tex_ct"]
        else:
            tex_amp = lk["tex_mr"] * (liver if mod == "t2" else liver * 0.6)
        scale_t2 = (liver / 95.0) if mod == "t2" else (liver / 175.0)
        if mod == "ct" and lk.get("subtle"):
            if lk["subtle_rim_t"] > 0:
                v = np.where(depth < lk["subtle_rim_t"], liver + lk["subtle_rim"], liver + lk["subtle_core"]).astype(np.float32)
            else:
                v = np.full(d.shape, liver + lk["subtle_core"], np.float32)
        elif mod == "ct" and lk.get("plain"):
            v = np.full(d.shape, liver + lk["plain_ct"], np.float32)
        elif kind == "cyst":
            v = np.full(d.shape, lk["ct"] if mod == "ct" else lk[mod] * scale_t2, np.float32)
        elif kind == "haemangioma":
            if mod == "ct":
                hypo, bright = lk["ct_hypo"], lk["nod"] * blood
                if lk["flash"]:
                    v = np.full(d.shape, lk["flash_level"] * blood, np.float32)
                else:
                    cosang = np.max(np.stack([ux * n[0] + uy * n[1] + uz * n[2] for n in nod_dirs]), 0)
                    nod = (1 - cosang) < lk["nod_size"] ** 2 * 1.2 * (1.0 + 0.3 * (t - 1.0))
                    periph = t > 0.55
                    v = np.where(nod & periph, bright, hypo).astype(np.float32)
                    v = np.where(t > 1.0 - lk["fill"], np.maximum(v, 0.5 * (hypo + bright)), v)
            else:
                v = np.full(d.shape, lk[mod] * scale_t2, np.float32)
        elif kind == "fnh":
            if mod == "ct":
                v = np.full(d.shape, liver + lk["ct_rel"], np.float32)
            else:
                v = np.full(d.shape, liver * lk[f"{mod}_rel"], np.float32)
            if lk["scar"]:
                spoke = np.max(np.stack([np.abs(ux * n[0] + uy * n[1] + uz * n[2]) for n in spokes]), 0) > 0.985
                scar = (t < lk["scar_r"]) | (spoke & (t < 0.65))
                sv = liver + lk["scar_ct"] if mod == "ct" else (lk["scar_t2"] * scale_t2 if mod == "t2" else 0.5 * liver)
                v = np.where(scar, sv, v)
        elif kind == "hcc":
            if mod == "ct":
                v = liver + lk["ct_rel"] + lk["mosaic"] * ctx.smooth_noise(d.shape, max(les.diameter_mm * 0.12, 2.0))
                if lk["capsule"]:
                    v = np.where(depth < lk["cap_t"], liver + lk["cap_ct"], v)
            else:
                v = lk[mod] * scale_t2 * (1 + 0.15 * ctx.smooth_noise(d.shape, max(les.diameter_mm * 0.12, 2.0)))
            if lk["necrosis"]:
                v = np.where(t < lk["nec_r"], 20.0 if mod == "ct" else (450.0 * scale_t2 if mod == "t2" else 40.0), v)
        elif kind == "metastasis":
            if mod == "ct":
                v = np.where(depth < lk["rim_t"], liver + lk["rim_ct"], liver + lk["ct_rel"]).astype(np.float32)
                if lk["necrosis"]:
                    v = np.where(t < lk["nec_r"], lk["nec_ct"], v)
            else:
                v = np.full(d.shape, lk[mod] * scale_t2, np.float32)
                if lk["necrosis"]:
                    v = np.where(t < lk["nec_r"], lk["t2_nec"] * scale_t2 if mod == "t2" else 40.0, v)
        else:
            if mod == "ct":
                v = liver + lk["ct_rel"] + np.where(t < 0.5, lk["centre_ct"], 0.0)
                v = v + lk["hetero"] * ctx.smooth_noise(d.shape, max(les.diameter_mm * 0.1, 2.0))
            else:
                v = lk[mod] * scale_t2 * (1 + 0.12 * ctx.smooth_noise(d.shape, max(les.diameter_mm * 0.1, 2.0)))
        return (v + tex_amp * tex).astype(np.float32)

    return value


def _unit_dirs(rng: np.random.Generator, n: int) -> np.ndarray:
    d = rng.normal(size=(max(n, 1), 3))
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def sample_lesions(rng: np.random.Generator, liver_sdf: Callable, liver_lo: Vec3, liver_hi: Vec3,
                   ct_grid: Grid, patient: Patient, cirrhotic: bool, n_lesions=None,
                   lesion_types: Optional[Sequence[str]] = None,
                   diameters: Optional[Tuple[float, float]] = None, plain: float = 0.0,
                   subtle: float = 0.0, bright: float = 0.0) -> List[Lesion]:
    """Place non-touching lesions inside the liver, preferring the CT field of view.

    `plain` / `subtle` / `bright` are the probabilities that a lesion gets the plain / subtle /
    bright CT look (module docstring)."""
    if n_lesions is None:
        n = int(rng.choice(7, p=[0.1, 0.28, 0.2, 0.15, 0.11, 0.09, 0.07]))
    elif isinstance(n_lesions, (tuple, list)):
        n = int(rng.integers(int(n_lesions[0]), int(n_lesions[1]) + 1))
    else:
        n = int(n_lesions)
    types = list(lesion_types) if lesion_types else list(TYPES)
    for t in types:
        if t not in CLASS:
            raise ValueError(f"unknown lesion type {t!r}; use {TYPES}")
    w = np.array([WEIGHTS[t] * (3.0 if (cirrhotic and t == "hcc") else 1.0) for t in types])
    w = w / w.sum()
    same = rng.random() < 0.35
    # candidate centres: liver box points whose centre falls inside the CT grid
    cand = np.column_stack([rng.uniform(liver_lo[k], liver_hi[k], 6000) for k in range(3)]).astype(np.float32)
    idx = ct_grid.physical_to_index(patient.to_physical(cand))
    inside_fov = np.all((idx >= 0) & (idx <= np.asarray(ct_grid.size) - 1), axis=1)
    cand_fov = cand[inside_fov]
    dl = liver_sdf((cand_fov[:, 0], cand_fov[:, 1], cand_fov[:, 2])) if len(cand_fov) else np.zeros(0)
    keep = dl < -3.0
    cand_fov, dl = cand_fov[keep], dl[keep]
    out: List[Lesion] = []
    first_type = None
    for _ in range(n):
        kind = first_type if (same and first_type) else str(rng.choice(types, p=w))
        first_type = first_type or kind
        diameter = _diameter(rng)
        if diameters is not None:  # log-uniform in the requested range (the draw above keeps the stream)
            lo_d, hi_d = float(diameters[0]), float(diameters[1])
            diameter = float(np.exp(np.log(lo_d) + (np.log(diameter) - np.log(5.0)) / np.log(12.0) * np.log(hi_d / lo_d)))
        placed = None
        for _attempt in range(6):
            rot, ax, waves, r0, bound = _shape(rng, kind, diameter)
            deep = rng.random() > 0.15
            need = -bound * (0.75 if deep else 0.25)
            ok = dl < need
            for les in out:
                dist = np.linalg.norm(cand_fov - np.asarray(les.centre, np.float32), axis=1)
                ok &= dist > les.bound + bound + 4.0
            choices = np.nonzero(ok)[0]
            if len(choices):
                c = cand_fov[int(rng.choice(choices))]
                placed = (vec(c), rot, ax, waves, r0, bound)
                break
            diameter = max(5.0, diameter * 0.8)
        if placed is None:
            continue
        c, rot, ax, waves, r0, bound = placed
        les = Lesion(len(out) + 1, kind, diameter, c, rot, ax, waves, r0, bound)
        les.look = _look(rng, kind, diameter, cirrhotic)
        les.look["depth_mm"] = float(-liver_sdf((np.float32([c[0]]), np.float32([c[1]]), np.float32([c[2]])))[0])
        out.append(les)
    if plain > 0:  # drawn only when asked for: a case made without plain lesions keeps its random stream
        for les in out:
            if les.type != "cyst" and rng.random() < plain:
                hyper = rng.random() < 0.2
                les.look.update(plain=1.0, plain_ct=float(rng.uniform(15, 45) if hyper else -rng.uniform(15, 70)))
    if subtle > 0:  # likewise drawn only when asked for
        for les in out:
            if les.type != "cyst" and rng.random() < subtle:
                les.look.update(subtle=1.0, **_subtle_look(rng))
    if bright > 0:  # likewise
        for les in out:
            if les.type != "cyst" and rng.random() < bright:
                les.look.update(subtle=1.0, subtle_rim=0.0, subtle_rim_t=0.0, subtle_core=float(rng.uniform(20, 80)))
    return out


def _subtle_look(rng: np.random.Generator) -> Dict[str, float]:
    """Near-isodense rim + faint core, or a flat bright ball (module docstring)."""
    if rng.random() < 0.5:
        return {"subtle_rim": float(rng.uniform(5, 15)), "subtle_rim_t": float(rng.uniform(1.5, 3.0)),
                "subtle_core": -float(rng.uniform(10, 35))}
    return {"subtle_rim": 0.0, "subtle_rim_t": 0.0, "subtle_core": float(rng.uniform(20, 50))}


def lesion_structures(rng: np.random.Generator, lesions: List[Lesion], liver_sdf: Callable) -> Tuple[List[Structure], Callable]:
    """Structures for ducts and lesions, and the liver SDF with capsular retraction applied."""
    structs: List[Structure] = []
    retractions = []
    for les in lesions:
        if les.type == "cholangiocarcinoma":
            for _ in range(int(rng.integers(1, 4))):
                dvec = _unit_dirs(rng, 1)[0]
                a = np.asarray(les.centre) + dvec * les.bound * 0.6
                b = a + dvec * rng.uniform(20, 45)
                ra = float(rng.uniform(1.5, 3.5))
                av, bv = vec(a), vec(b)
                structs.append(Structure("bile_duct", "bile_duct", vec(np.minimum(a, b) - 6), vec(np.maximum(a, b) + 6),
                                         (lambda q, av=av, bv=bv, ra=ra: capsule(q, av, bv, ra, ra * 0.6)), inside_liver=True))
            if les.look["depth_mm"] < les.bound + 15:
                retractions.append((les.centre, les.bound, float(rng.uniform(2.0, 5.0))))
    for les in lesions:
        nod = _unit_dirs(rng, int(les.look.get("n_nod", 1)))
        spokes = _unit_dirs(rng, int(les.look.get("n_spokes", 1)))
        lo = vec(np.asarray(les.centre) - les.bound - 1)
        hi = vec(np.asarray(les.centre) + les.bound + 1)
        structs.append(Structure(f"lesion_{les.id}", les.type, lo, hi, les.sdf, _appearance(les, nod, spokes),
                                 inside_liver=True, lesion_id=les.id))
    if not retractions:
        return structs, liver_sdf

    def retracted(q: Coords) -> np.ndarray:
        d = liver_sdf(q)
        for c, r, amp in retractions:
            dist2 = (q[0] - c[0]) ** 2 + (q[1] - c[1]) ** 2 + (q[2] - c[2]) ** 2
            d = d + amp * np.exp(-dist2 / (2 * (r + 10.0) ** 2))
        return d

    return structs, retracted
