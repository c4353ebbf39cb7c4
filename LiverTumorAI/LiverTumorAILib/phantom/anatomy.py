"""Abdominal anatomy as signed-distance structures in the anatomical frame (mm).

Frame: x towards patient left, y posterior, z superior (LPS axes), origin on the
midline near the liver hilum level. Patient size scales everything (factor 0.85-1.15)
and each organ additionally varies in size, position and orientation.

Modelling choices (ranges drawn per case):
- body: elliptic cross-section, half-width 125-185 mm, anterior half-depth 95-140 mm,
  flatter back; subcutaneous fat 5-45 mm; muscle wall 6-14 mm; visceral fat inside.
- spine: vertebral body ellipse (18-24 x 15-20 mm half-axes) with 2 mm cortex, discs
  every 28-34 mm, canal (CSF), lamina/spinous/transverse processes; ribs as inclined
  bands (period 28-38 mm) in the body wall, costal cartilage anteriorly.
- aorta (radius 9-14 mm) left-anterior of the spine, IVC (11-15 x 8-12 mm) right; the
  IVC runs through the posterior liver (carved out of the liver, so not label 1).
- liver: smooth union of a right lobe (large ellipsoid clipped by the body cavity and
  the right diaphragm dome), a tapered left lobe (varies from small to reaching the
  spleen) and a caudate lobe, cut by the diaphragm above and a sloping visceral
  surface below, carved by IVC, gallbladder, right kidney and stomach, perturbed by
  low-frequency noise (3-8 mm). Cirrhosis: right lobe atrophy, caudate/left lobe
  hypertrophy, nodular surface (1-2.5 mm, 8-20 mm wavelength), splenomegaly, ascites.
  Typical volume 1.1-2.2 l (CHAOS CT example: 1.42 l, 194 x 173 x 140 mm).
- vessels: portal vein (trunk 7-10 mm radius, from the confluence to the hilum, then
  right/left branches) and three hepatic veins draining into the IVC below the dome,
  branching recursively (radius x 0.6-0.8 per level, down to ~1.5 mm).
- kidneys (cortex/medulla/sinus fat/pelvis), spleen (crescent), stomach (wall, fluid or
  food, anterior gas), pancreas, gallbladder (80 %), bowel loops and colon with gas,
  fluid, faeces or positive oral contrast, lungs above the diaphragm, heart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Tuple

import numpy as np

from .render import RenderCtx, Structure
from .shapes import (
    Coords,
    FourierNoise,
    Vec3,
    capsule,
    ellipse2d,
    ellipsoid,
    ellipsoid_local,
    rotation,
    smax,
    smin,
    to_local,
    vec,
)

BIG = 2000.0


@dataclass
class Anatomy:
    structures: List[Structure]
    liver_sdf: Callable[[Coords], np.ndarray]
    liver_lo: Vec3
    liver_hi: Vec3
    liver_centre: Vec3
    ivc: Tuple[float, float]


def _pts(points: np.ndarray) -> Coords:
    p = np.asarray(points, np.float32).reshape(-1, 3)
    return p[:, 0], p[:, 1], p[:, 2]


def _box(c: Vec3, r: float) -> Tuple[Vec3, Vec3]:
    return vec(np.asarray(c) - r), vec(np.asarray(c) + r)


def build_anatomy(rng: np.random.Generator, cirrhotic: bool) -> Anatomy:  # noqa: C901 - one recipe
    u = rng.uniform
    s = u(0.85, 1.15)  # patient size
    # --- body and wall -----------------------------------------------------------
    adipose = u(0.0, 1.0) ** 1.5  # habitus: 0 lean .. 1 obese
    t_fat = 5 + 35 * adipose * u(0.7, 1.0)
    t_mus = u(6, 14)
    a = u(115, 145) * s + t_fat + t_mus + 25 * adipose * u(0, 1)
    b_ant = u(80, 105) * s + t_fat + t_mus + 20 * adipose * u(0, 1)
    b_post = b_ant * u(0.8, 0.95)
    zmod = FourierNoise(rng, 3, (200, 500))
    zamp = u(0.0, 0.05)

    def body_ellipse(q: Coords, shrink: float, post: float | None = None) -> np.ndarray:
        x, y, z = q
        scale = 1.0 + zamp * zmod((x * 0, y * 0, z))
        bp = (b_post - shrink) if post is None else post
        yy = np.where(y > 0, y * ((b_ant - shrink) / bp), y)
        return ellipse2d(x / scale, yy / scale, a - shrink, b_ant - shrink)

    a_c, b_c = a - t_fat - t_mus, b_ant - t_fat - t_mus
    y_spine = b_post - t_fat * 0.8 - u(45, 60) * s  # vertebral body centre
    vb_rx, vb_ry = u(18, 24) * s, u(15, 20) * s
    b_cp = y_spine + vb_ry * 0.3 + 8  # posterior half-depth of the cavity

    def cavity(q: Coords) -> np.ndarray:
        return body_ellipse(q, t_fat + t_mus, post=b_cp)

    wide = (a + 30, b_ant + 30, BIG)
    structs: List[Structure] = []
    structs.append(Structure("body", "fat", vec((-wide[0], -wide[1], -BIG)), wide,
                             lambda q: body_ellipse(q, 0.0)))
    structs.append(Structure("wall", "muscle", vec((-wide[0], -wide[1], -BIG)), wide,
                             lambda q: body_ellipse(q, t_fat)))
    structs.append(Structure("cavity", "fat", vec((-wide[0], -wide[1], -BIG)), wide, cavity))

    # paraspinal and psoas muscles
    ps_x, ps_y, ps_r = u(25, 35) * s, y_spine + u(35, 45) * s, (u(22, 30) * s, u(18, 24) * s)

    def paraspinal(q: Coords) -> np.ndarray:
        x, y, _ = q
        d = np.minimum(ellipse2d(x - ps_x, y - ps_y, *ps_r), ellipse2d(x + ps_x, y - ps_y, *ps_r))
        return np.maximum(d, body_ellipse(q, t_fat))

    structs.append(Structure("paraspinal", "muscle", vec((-a, y_spine, -BIG)), vec((a, b_post, BIG)), paraspinal))
    z_psoas = u(-60, -20)

    def psoas(q: Coords) -> np.ndarray:
        x, y, z = q
        r = np.clip(6 + 0.18 * (z_psoas - z), 4, 28 * s)
        cx = vb_rx + 6 + 0.6 * r
        d = np.minimum(np.sqrt((x - cx) ** 2 + (y - y_spine) ** 2), np.sqrt((x + cx) ** 2 + (y - y_spine) ** 2)) - r
        return np.maximum(d, z - z_psoas)

    structs.append(Structure("psoas", "muscle", vec((-90, y_spine - 40, -BIG)), vec((90, y_spine + 40, z_psoas)), psoas))

    # --- diaphragm domes, lungs, heart ----------------------------------------------
    z_dome_r = u(80, 115) * s
    z_dome_l = z_dome_r - u(5, 25)
    x_dome = a_c * u(0.35, 0.5)
    r_dome = u(120, 200) * s
    k_post = u(0.003, 0.007)
    y_dome = u(-10, 20)

    def dome(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        rr = (y - y_dome) ** 2
        zr = z_dome_r - ((x + x_dome) ** 2 + rr) / (2 * r_dome)
        zl = z_dome_l - ((x - x_dome) ** 2 + rr) / (2 * r_dome)
        return np.maximum(zr, zl) - k_post * np.maximum(y - 20.0, 0.0) ** 2

    # --- liver ------------------------------------------------------------------
    rl_scale = u(0.75, 0.9) if cirrhotic else 1.0
    ll_scale = u(1.1, 1.35) if cirrhotic else 1.0
    rl_c = vec((-a_c * u(0.42, 0.55), u(-15, 10) * s, u(-15, 5)))
    rl_r = vec(np.array([a_c * u(0.5, 0.62), (b_c + b_cp) * u(0.36, 0.46), u(80, 105) * s]) * rl_scale)
    rl_rot = rotation(u(-8, 8), u(-10, 10), u(-20, 10))
    ll_c = vec((u(-5, 25) * s, -b_c * u(0.3, 0.5), rl_c[2] + u(25, 50)))
    ll_r = vec(np.array([u(50, 95), u(24, 38), u(32, 48)]) * s * ll_scale)
    ll_rot = rotation(u(-10, 10), u(-10, 10), u(-25, 5))
    ll_taper = u(0.25, 0.6)
    ivc_x, ivc_y = -u(16, 28) * s, y_spine - vb_ry - u(8, 16)
    ivc_r = (u(11, 15) * s, u(8, 12) * s)
    cl_c = vec((ivc_x + u(10, 20), ivc_y - u(12, 22), rl_c[2] + u(5, 25)))
    cl_r = vec(np.array([u(16, 24), u(14, 20), u(28, 40)]) * s * (u(1.2, 1.5) if cirrhotic else 1.0))
    inf_gx, inf_gy = u(0.2, 0.6), u(-0.35, 0.1)
    inf_z0 = rl_c[2] - rl_r[2] * u(0.55, 0.8)
    noise_lo = FourierNoise(rng, 8, (60, 170))
    amp_lo = u(3, 8)
    noise_hi = FourierNoise(rng, 24, (8, 20)) if cirrhotic else None
    amp_hi = u(1.0, 2.5)
    riedel = rng.random() < 0.12
    riedel_c = vec((rl_c[0] - rl_r[0] * 0.3, rl_c[1] + u(-10, 20), rl_c[2] - rl_r[2] * 0.8))
    ao_x, ao_y, ao_r = u(5, 22) * s, y_spine - vb_ry - u(10, 16) * s, u(9, 14) * s

    # right kidney (needed by the liver carve)
    kid_r_c = vec((-u(55, 75) * s, y_spine + u(-5, 10), u(-110, -70) * s))
    kid_l_c = vec((u(55, 75) * s, y_spine + u(-5, 10), kid_r_c[2] + u(10, 35)))
    kid_rad = vec(np.array([u(24, 30), u(20, 26), u(48, 60)]) * s)
    kid_rot_r = rotation(u(-15, 5), u(-20, -5), u(-40, -20))
    kid_rot_l = rotation(u(-15, 5), u(5, 20), u(20, 40))
    st_c = vec((u(35, 70) * s, -b_c * u(0.05, 0.35), z_dome_l - u(35, 60)))
    st_r = vec(np.array([u(30, 50), u(25, 40), u(45, 65)]) * s)
    st_rot = rotation(u(-20, 20), u(-30, -5), u(-30, 30))
    has_gb = rng.random() < 0.8

    gain = [1.0]  # lobe scale, calibrated below to a target volume

    def liver_core(q: Coords) -> np.ndarray:
        x, y, z = q
        g = gain[0]
        d = ellipsoid(q, rl_c, vec(np.array(rl_r) * g), rl_rot)
        lx, ly, lz = to_local(q, ll_c, ll_rot)
        llr = vec(np.array(ll_r) * g)
        tap = np.clip(1.0 - ll_taper * lx / llr[0], 0.35, 1.8)
        dl = ellipsoid_local(lx, ly / tap, lz / tap, llr) * np.minimum(tap, 1.0)
        d = smin(d, dl, 25.0)
        d = smin(d, ellipsoid(q, cl_c, vec(np.array(cl_r) * g)), 15.0)
        if riedel:
            d = smin(d, ellipsoid(q, riedel_c, (30.0 * g, 25.0 * g, 45.0 * g)), 20.0)
        d = d + amp_lo * noise_lo(q)
        d = smax(d, z - dome(x, y) + 2.0, 8.0)
        d = smax(d, (inf_z0 + inf_gx * (x - rl_c[0]) + inf_gy * (y - rl_c[1])) - z, 15.0)
        d = smax(d, cavity(q) + 3.0, 6.0)
        d = smax(d, -(ellipsoid(q, kid_r_c, kid_rad, kid_rot_r) - 3.0), 8.0)
        d = smax(d, -(ellipsoid(q, st_c, st_r, st_rot) - 3.0), 8.0)
        d = np.maximum(d, -(np.sqrt((x - ao_x) ** 2 + (y - ao_y) ** 2) - ao_r - 4.0))
        d = np.maximum(d, -(ellipse2d(x, y - y_spine, vb_rx + 6, vb_ry + 6)))
        if noise_hi is not None:
            d = d + amp_hi * noise_hi(q)
        return d

    # liver bounding box (conservative, allows the calibration gain up to 1.8)
    lo = np.minimum(np.array(rl_c) - np.max(rl_r) * 1.8 - 15, np.array(ll_c) - np.max(ll_r) * 2.8 - 15)
    hi = np.maximum(np.array(rl_c) + np.max(rl_r) * 1.8 + 15, np.array(ll_c) + np.max(ll_r) * 2.8 + 15)
    hi[2] = min(hi[2], z_dome_r + 15)
    lo = np.maximum(lo, [-a_c - 5, -b_c - 5, -BIG])
    hi = np.minimum(hi, [a_c + 5, b_cp + 5, BIG])
    liver_lo, liver_hi = vec(lo), vec(hi)

    # calibrate the lobe scale so the whole-organ volume hits a plausible target
    target = float(np.exp(rng.normal(np.log(1550.0), 0.2)))
    target = float(np.clip(target * (0.75 if cirrhotic else 1.0), 800.0, 2600.0))
    axes = [np.arange(lo[k], hi[k], 5.0, dtype=np.float32) for k in range(3)]
    gq = np.meshgrid(*axes, indexing="ij")
    for _ in range(6):
        vol = float((liver_core((gq[0], gq[1], gq[2])) < 0).sum()) * 0.125
        if vol <= 0:
            gain[0] *= 1.3
            continue
        ratio = target / vol
        if abs(ratio - 1) < 0.05:
            break
        gain[0] = float(np.clip(gain[0] * ratio ** 0.5, 0.6, 1.8))

    # gallbladder in the fossa on the visceral surface
    gb_c, gb_r, gb_rot = vec((0, 0, 0)), vec((1, 1, 1)), np.eye(3)
    if has_gb:
        gx, gy = rl_c[0] + rl_r[0] * u(0.35, 0.65), -b_c * u(0.25, 0.55)
        zs = np.linspace(liver_lo[2], liver_hi[2], 200)
        dz = liver_core(_pts(np.stack([np.full_like(zs, gx), np.full_like(zs, gy), zs], 1)))
        inside = np.nonzero(dz < 0)[0]
        if len(inside):
            gb_r = vec(np.array([u(12, 20), u(12, 20), u(25, 45)]) * s)
            gb_c = vec((gx, gy, zs[inside[0]] + gb_r[2] * u(0.1, 0.5)))
            gb_rot = rotation(u(-50, -20), u(-15, 15), 0)
        else:
            has_gb = False

    def ivc_sdf(q: Coords) -> np.ndarray:
        return ellipse2d(q[0] - ivc_x, q[1] - ivc_y, *ivc_r)

    def liver_sdf(q: Coords) -> np.ndarray:
        d = liver_core(q)
        d = np.maximum(d, -ivc_sdf(q))
        if has_gb:
            d = np.maximum(d, -(ellipsoid(q, gb_c, gb_r, gb_rot) - 1.5))
        return d

    # --- remaining organs, painted in order ---------------------------------------
    z_bottom = inf_z0 - 60
    _bowel(rng, structs, s, a_c, b_c, y_spine, z_bottom, rl_c[2] + 10)
    structs.append(_stomach(rng, st_c, st_r, st_rot))
    structs.append(_pancreas(rng, s, y_spine, vb_ry, rl_c[2]))
    if cirrhotic and rng.random() < 0.5:
        t_asc = u(4, 20)

        def ascites(q: Coords) -> np.ndarray:
            dl = liver_core(q)
            return np.maximum(np.maximum(dl - t_asc, -dl), cavity(q) + 1.0)

        structs.append(Structure("ascites", "ascites", vec(np.array(liver_lo) - 25), vec(np.array(liver_hi) + 25), ascites))
    structs += _kidney(rng, "kidney_r", kid_r_c, kid_rad, kid_rot_r)
    structs += _kidney(rng, "kidney_l", kid_l_c, vec(np.array(kid_rad) * u(0.95, 1.05)), kid_rot_l)
    sp_c = vec((a_c * u(0.55, 0.75), b_cp * u(0.2, 0.7), z_dome_l - u(45, 70) * s))
    sp_r = vec(np.array([u(18, 26), u(40, 60), u(45, 65)]) * s * (u(1.2, 1.5) if cirrhotic else 1.0))
    sp_rot = rotation(u(-10, 10), u(-10, 10), u(-55, -25))
    sp_cut = vec(np.array(sp_c) + np.array([-sp_r[0] * 3.2, -sp_r[1] * 0.3, 0.0]))

    def spleen(q: Coords) -> np.ndarray:
        d = ellipsoid(q, sp_c, sp_r, sp_rot)
        d = smax(d, -(ellipsoid(q, sp_cut, (sp_r[0] * 2.6, sp_r[1] * 1.2, sp_r[2] * 1.3)) - 0), 6.0)
        d = smax(d, q[2] - dome(q[0], q[1]) + 2.0, 6.0)
        return np.maximum(d, cavity(q) + 2.0)

    structs.append(Structure("spleen", "spleen", *_box(sp_c, max(sp_r) + 5), spleen))

    # great vessels
    structs.append(Structure("aorta", "aorta", vec((ao_x - ao_r - 2, ao_y - ao_r - 2, -BIG)),
                             vec((ao_x + ao_r + 2, ao_y + ao_r + 2, BIG)),
                             lambda q: np.sqrt((q[0] - ao_x) ** 2 + (q[1] - ao_y) ** 2) - ao_r))
    structs.append(Structure("ivc", "ivc", vec((ivc_x - 20, ivc_y - 20, -BIG)), vec((ivc_x + 20, ivc_y + 20, BIG)), ivc_sdf))
    structs += _spine(rng, s, y_spine, vb_rx, vb_ry, b_post)
    structs.append(_ribs(rng, s, a, b_ant, b_post, a_c, t_mus, body_ellipse, t_fat, rl_c[2]))

    # thorax: diaphragm muscle band, lungs, heart
    def thorax_mask(q: Coords, lower: float) -> np.ndarray:
        return np.maximum(cavity(q) - 4.0, dome(q[0], q[1]) + lower - q[2])

    structs.append(Structure("diaphragm", "diaphragm", vec((-a, -b_ant, z_dome_l - 150)), vec((a, b_post, BIG)),
                             lambda q: thorax_mask(q, 0.0)))
    u_lung = float(u(4, 7))
    structs.append(Structure("lung", "lung", vec((-a, -b_ant, z_dome_l - 150)), vec((a, b_post, BIG)),
                             lambda q: thorax_mask(q, u_lung)))
    ht_c = vec((u(10, 35) * s, -b_c * u(0.2, 0.4), z_dome_l + u(30, 55)))
    ht_r = vec(np.array([u(55, 70), u(45, 60), u(50, 65)]) * s)
    ht_rot = rotation(0, 0, u(20, 45))

    def heart(q: Coords) -> np.ndarray:
        return np.maximum(ellipsoid(q, ht_c, ht_r, ht_rot), dome(q[0], q[1]) + u_lung - q[2])

    myo_t = float(u(8, 12))

    def heart_value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        return np.where(d > -myo_t, ctx.tissue("myocardium"), ctx.tissue("heart"))

    structs.append(Structure("heart", "heart", *_box(ht_c, max(ht_r) + 5), heart, heart_value))
    if has_gb:
        structs.append(Structure("gallbladder", "gallbladder", *_box(gb_c, max(gb_r) + 3),
                                 lambda q: ellipsoid(q, gb_c, gb_r, gb_rot)))

    # --- the liver and its vessels ---------------------------------------------------
    tex_sigma = u(1.5, 4.0) if not cirrhotic else u(2.5, 5.0)
    tex_amp = {"ct": u(2, 6) if not cirrhotic else u(5, 10), "t2": u(2, 5), "t1": u(2, 5)}
    if cirrhotic:
        tex_amp["t2"] = u(5, 10)

    def liver_value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        base = ctx.tissue("liver")
        scale = 1.0 if ctx.modality == "ct" else base / 100.0
        return base + tex_amp[ctx.modality] * scale * ctx.smooth_noise(d.shape, tex_sigma)

    structs.append(Structure("liver", "liver", liver_lo, liver_hi, liver_sdf, liver_value))
    hilum = vec((ivc_x + u(15, 30), ivc_y - u(25, 40), cl_c[2] - u(15, 30)))
    confl = vec((u(0, 15), y_spine - vb_ry - u(30, 45), hilum[2] - u(45, 70)))
    pv_r = u(6, 9) * s
    structs.append(Structure("portal_trunk", "portal", *_seg_box(confl, hilum, pv_r),
                             lambda q: capsule(q, confl, hilum, pv_r, pv_r * 0.95)))
    segs: List[Tuple[Vec3, Vec3, float, float, str]] = []
    pv_root = _nearest_inside(rng, liver_sdf, hilum, 6.0)
    if pv_root != hilum:
        segs.append((hilum, pv_root, pv_r * 0.9, pv_r * 0.85, "portal"))
    for dirn in [(-1.0, 0.2, 0.0), (1.0, -0.8, 0.3)]:
        _grow(rng, segs, pv_root, np.array(dirn), u(30, 45) * s, pv_r * u(0.7, 0.85), 5, "portal", liver_sdf)
    ivc_top = vec((ivc_x, ivc_y, dome(np.array([ivc_x]), np.array([ivc_y]))[0] - u(15, 25)))
    hv_r = u(4.5, 7) * s
    for dirn in [(-1.0, 0.2, -0.4), (-0.3, -1.0, -0.5), (0.8, -0.9, -0.2)]:
        root = _nearest_inside(rng, liver_sdf, vec(np.asarray(ivc_top) + np.asarray(dirn) * 12.0), hv_r + 2.0)
        segs.append((ivc_top, root, hv_r * 1.1, hv_r, "hepatic_vein"))
        _grow(rng, segs, root, np.array(dirn), u(30, 45) * s, hv_r, 4, "hepatic_vein", liver_sdf)
    for a0, b0, ra, rb, kind in segs:
        structs.append(Structure(f"vessel_{kind}", kind, *_seg_box(a0, b0, max(ra, rb)),
                                 (lambda q, a0=a0, b0=b0, ra=ra, rb=rb: capsule(q, a0, b0, ra, rb)), inside_liver=True))
    centre = vec((np.array(rl_c) * 2 + np.array(ll_c)) / 3)
    return Anatomy(structs, liver_sdf, liver_lo, liver_hi, centre, (ivc_x, ivc_y))


def _seg_box(a: Vec3, b: Vec3, r: float) -> Tuple[Vec3, Vec3]:
    lo = np.minimum(a, b) - r - 2
    hi = np.maximum(a, b) + r + 2
    return vec(lo), vec(hi)


def _nearest_inside(rng: np.random.Generator, liver_sdf: Callable, p: Vec3, depth: float) -> Vec3:
    """`p` if it is `depth` mm inside the liver, else the closest such point within 80 mm."""
    if float(liver_sdf(_pts(np.asarray(p)))[0]) < -depth:
        return p
    cloud = np.asarray(p) + rng.normal(size=(600, 3)) * 35.0
    d = liver_sdf(_pts(cloud))
    ok = np.nonzero(d < -depth)[0]
    if not len(ok):
        return p
    best = ok[np.argmin(np.linalg.norm(cloud[ok] - np.asarray(p), axis=1))]
    return vec(cloud[best])


def _grow(rng: np.random.Generator, out: list, start: Vec3, direction: np.ndarray, length: float,
          radius: float, depth: int, kind: str, liver_sdf: Callable) -> None:
    """Recursive vessel tree; each segment must end inside the liver (a few tries)."""
    d0 = direction / np.linalg.norm(direction)
    p0 = np.asarray(start)
    end = None
    for attempt in range(5):
        d = d0 if attempt == 0 else d0 + rng.normal(size=3) * 0.35 * attempt
        d = d / np.linalg.norm(d)
        seg = length * (1.0, 1.4, 0.7, 1.8, 0.5)[attempt]
        cand = p0 + d * seg
        if float(liver_sdf(_pts(cand))[0]) < -max(radius, 2.0):
            end = cand
            break
    if end is None:
        return
    rb = radius * rng.uniform(0.85, 0.97)
    out.append((vec(start), vec(end), float(radius), float(rb), kind))
    if depth == 0 or rb < 1.4:
        return
    n_child = 3 if (depth >= 3 and rng.random() < 0.3) else 2
    for _ in range(n_child):
        nd = d + rng.normal(size=3) * 0.6
        _grow(rng, out, vec(end), nd, length * rng.uniform(0.7, 0.9), rb * rng.uniform(0.62, 0.8), depth - 1, kind, liver_sdf)


def _kidney(rng: np.random.Generator, name: str, c: Vec3, r: Vec3, rot: np.ndarray) -> List[Structure]:
    u = rng.uniform
    cortex = u(5, 8)
    side = 1.0 if c[0] > 0 else -1.0  # medial direction is -side in x
    sinus_c = vec(np.array(c) + rot @ np.array([-side * r[0] * 0.45, -r[1] * 0.2, 0.0]))
    sinus_r = vec((r[0] * 0.45, r[1] * 0.4, r[2] * 0.5))
    pelvis_r = u(4, 9)

    def sdf(q: Coords) -> np.ndarray:
        return ellipsoid(q, c, r, rot)

    def value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        v = np.where(d > -cortex, ctx.tissue("kidney_cortex"), ctx.tissue("kidney_medulla")).astype(np.float32)
        ds = ellipsoid(q, sinus_c, sinus_r, rot)
        v = np.where(ds < 0, ctx.tissue("fat"), v)
        dp = np.sqrt((q[0] - sinus_c[0]) ** 2 + (q[1] - sinus_c[1]) ** 2 + ((q[2] - sinus_c[2]) * 0.6) ** 2) - pelvis_r
        return np.where(dp < 0, ctx.tissue("urine"), v)

    return [Structure(name, "kidney_cortex", *_box(c, max(r) + 3), sdf, value)]


def _stomach(rng: np.random.Generator, c: Vec3, r: Vec3, rot: np.ndarray) -> Structure:
    u = rng.uniform
    wall = u(3, 6)
    content = rng.choice(["fluid", "faeces", "oral_contrast"], p=[0.6, 0.3, 0.1])
    gas_level = c[1] - r[1] * u(-0.1, 1.1)  # gas anterior (y smaller) of this level

    def value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        inner = ctx.tissue(str(content))
        if content == "faeces":
            inner = inner + 30.0 * (ctx.smooth_noise(d.shape, 3.0) if ctx.modality == "ct" else 0.0)
        v = np.where(q[1] < gas_level, ctx.tissue("air"), inner)
        return np.where(d > -wall, ctx.tissue("stomach_wall"), v)

    return Structure("stomach", "stomach_wall", *_box(c, max(r) + 3), lambda q: ellipsoid(q, c, r, rot), value)


def _pancreas(rng: np.random.Generator, s: float, y_spine: float, vb_ry: float, z0: float) -> Structure:
    u = rng.uniform
    yb = y_spine - vb_ry - u(35, 50)
    pts = [vec((u(50, 80) * s, y_spine - u(0, 15), z0 - u(5, 25))), vec((0.0, yb, z0 - u(25, 45))),
           vec((-u(25, 40) * s, yb + u(-5, 10), z0 - u(45, 70)))]
    rad = [u(7, 11), u(9, 13), u(12, 17)]

    def sdf(q: Coords) -> np.ndarray:
        d = capsule(q, pts[0], pts[1], rad[0], rad[1])
        return smin(d, capsule(q, pts[1], pts[2], rad[1], rad[2]), 6.0)

    lo = np.min(pts, 0) - 20
    hi = np.max(pts, 0) + 20
    return Structure("pancreas", "pancreas", vec(lo), vec(hi), sdf)


def _bowel(rng: np.random.Generator, out: List[Structure], s: float, a_c: float, b_c: float,
           y_spine: float, z_lo: float, z_hi: float) -> None:
    """Random-walk loops: small bowel (radius 8-14) and colon (16-26) with gas/fluid/faeces."""
    u = rng.uniform
    n = int(rng.integers(10, 22))
    for i in range(n):
        colon = i < 3
        r = u(16, 26) * s if colon else u(8, 14) * s
        p = np.array([u(-0.8, 0.8) * a_c, u(-0.85, 0.1) * b_c if not colon else u(-0.9, 0.3) * b_c, u(z_lo, z_hi)])
        p[1] = min(p[1], y_spine - 25)
        d = rng.normal(size=3)
        pts = [vec(p)]
        for _ in range(int(rng.integers(2, 5))):
            d = d + rng.normal(size=3) * 0.8
            d /= np.linalg.norm(d)
            p = p + d * u(25, 50)
            p[0] = np.clip(p[0], -0.85 * a_c, 0.85 * a_c)
            p[1] = np.clip(p[1], -0.9 * b_c, y_spine - 25)
            pts.append(vec(p))
        content = rng.choice(["fluid", "air", "faeces", "oral_contrast"],
                             p=[0.25, 0.25, 0.45, 0.05] if colon else [0.55, 0.2, 0.1, 0.15])
        gas_frac = u(0.0, 0.7) if content != "air" else 1.0
        wall = u(1.5, 3.5)
        ymid = float(np.mean([pp[1] for pp in pts]))
        level = ymid + r * (1.0 - 2.0 * gas_frac)

        def sdf(q: Coords, pts=pts, r=r) -> np.ndarray:
            d = capsule(q, pts[0], pts[1], r, r)
            for k in range(1, len(pts) - 1):
                d = smin(d, capsule(q, pts[k], pts[k + 1], r, r), 4.0)
            return d

        def value(q: Coords, d: np.ndarray, ctx: RenderCtx, content=str(content), level=level, wall=wall):
            inner = np.float32(ctx.tissue(content if content != "air" else "air"))
            if content == "faeces":
                bub = ctx.smooth_noise(d.shape, 2.5)
                inner = np.where(bub > 1.0, ctx.tissue("air"), inner + (20.0 if ctx.modality == "ct" else 0.0) * bub)
            v = np.where(q[1] < level, ctx.tissue("air"), inner)
            return np.where(d > -wall, ctx.tissue("bowel_wall"), v)

        lo = np.min(pts, 0) - r - 2
        hi = np.max(pts, 0) + r + 2
        out.append(Structure("bowel", "bowel_wall", vec(lo), vec(hi), sdf, value))


def _spine(rng: np.random.Generator, s: float, y_spine: float, vb_rx: float, vb_ry: float, b_post: float) -> List[Structure]:
    u = rng.uniform
    period, disc_t, z0 = u(28, 34) * s, u(6, 10), u(0, 40)
    rc = u(7, 10)
    yc = y_spine + vb_ry + rc + u(2, 5)
    spin_len = u(25, 40) * s

    def phase(z: np.ndarray) -> np.ndarray:
        t = (z - z0) / period
        return t - np.floor(t)  # 0..1

    def vb_value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        v = np.where(d > -2.0, ctx.tissue("bone_cortex"), ctx.tissue("bone")).astype(np.float32)
        return np.where(phase(q[2]) * period < disc_t, ctx.tissue("disc"), v)

    def posterior(q: Coords) -> np.ndarray:
        x, y, z = q
        rr = np.sqrt(x * x + (y - yc) ** 2)
        arch = np.maximum(np.abs(rr - (rc + 4.0)) - 3.0, yc - 2.0 - y)
        spinous = capsule((x, y, z * 0), (0.0, yc + rc + 4.0, 0.0), (0.0, yc + rc + spin_len, 0.0), 4.0, 3.0)
        ph = np.abs(phase(z) - 0.55) * period - period * 0.22
        tp = np.minimum(capsule((x, y, z * 0), (8.0, yc - 2, 0.0), (38.0 * s, yc - 8, 0.0), 5.0, 4.0),
                        capsule((x, y, z * 0), (-8.0, yc - 2, 0.0), (-38.0 * s, yc - 8, 0.0), 5.0, 4.0))
        return np.minimum(np.minimum(arch, spinous), np.maximum(tp, ph))

    def post_value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        return np.where(d > -1.5, ctx.tissue("bone_cortex"), ctx.tissue("bone"))

    box_lo = vec((-vb_rx - 3, y_spine - vb_ry - 3, -BIG))
    box_hi = vec((vb_rx + 3, y_spine + vb_ry + 3, BIG))
    return [
        Structure("vertebral_body", "bone", box_lo, box_hi, lambda q: ellipse2d(q[0], q[1] - y_spine, vb_rx, vb_ry), vb_value),
        Structure("vertebral_arch", "bone", vec((-50, yc - 15, -BIG)), vec((50, yc + rc + spin_len + 5, BIG)), posterior, post_value),
        Structure("canal", "csf", vec((-rc - 2, yc - rc - 2, -BIG)), vec((rc + 2, yc + rc + 2, BIG)),
                  lambda q: np.sqrt(q[0] ** 2 + (q[1] - yc) ** 2) - rc),
    ]


def _ribs(rng: np.random.Generator, s: float, a: float, b_ant: float, b_post: float, a_c: float, t_mus: float,
          body_ellipse: Callable, t_fat: float, z_ref: float) -> Structure:
    u = rng.uniform
    period, half_h, half_w = u(28, 38) * s, u(4, 6), u(3.5, 5.5)
    slope = u(30, 70)
    z0 = u(0, period)
    off = t_fat + t_mus * u(0.3, 0.7)
    z_low = z_ref - u(40, 80)

    def sdf(q: Coords) -> np.ndarray:
        x, y, z = q
        dr = np.abs(body_ellipse(q, off)) - half_w
        sin_t = y / np.maximum(np.sqrt(x * x + y * y), 1e-3)
        zs = z + slope * (1.0 - sin_t) * 0.5
        t = (zs - z0) / period
        dz = np.abs(t - np.floor(t) - 0.5) * period - half_h
        d = np.maximum(dr, dz)
        d = np.maximum(d, np.where(y > 0, -BIG, 30.0 - np.abs(x)))  # no ribs at the sternum
        low = z_low - 40.0 * (sin_t + 1.0) * 0.5  # posterior ribs reach lower
        return np.maximum(d, low - z)

    def value(q: Coords, d: np.ndarray, ctx: RenderCtx):
        return np.where(q[1] < -b_ant * 0.35, ctx.tissue("cartilage"), ctx.tissue("rib"))

    return Structure("ribs", "rib", vec((-a - 5, -b_ant - 5, z_low - 80)), vec((a + 5, b_post + 5, BIG)), sdf, value)
