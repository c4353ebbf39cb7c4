"""Checks of the network's liver and lesions against the CT's own HU (anatomy, not learning).

A network trained on phantoms labels neighbours of the liver that it never saw as liver: on a
real scan to the pelvis, colon and pelvic bowel joined to the liver along the right flank; on
real and unseen synthetic scans, the kidney, the stomach, the heart. And it marks "lesions"
inside those neighbours. The liver's parenchyma is one tissue with one HU level per scan (the
mode of its histogram), so the organ and each lesion can be checked against it:

* `trim_slices_unlike_liver`: head-foot stretches whose slices' median HU is off the level;
* `drop_regions_unlike_liver`: regions at the organ's surface whose local HU (Gaussian, sigma
  `REGION_SIGMA_MM`) is off the level: a neighbouring organ drawn onto the liver. Regions
  inside the organ (vessels, a lesion the network called liver) are never removed;
* `lesions_in_other_tissue`: a lesion that is off the level, with a liver-labelled rim that is
  off the level too and looks like the lesion, sits inside one tissue that is not liver (a
  "lesion" in the kidney that was drawn as liver around it). A real lesion's rim is liver.
  Limit: a homogeneous, strongly contrasting lesion drawn more than `LESION_RIM_MM` inside its
  edge all round has a rim of lesion and is dropped (none was among the held-out phantoms'
  found lesions). The same check drops a "lesion" of fat density (median below `FAT_HU`) whose
  rim lies outside the liver for `FAT_OUTSIDE_FRACTION` of it: the fat around the liver, drawn
  at its edge. Fat-containing lesions inside the liver are kept. Two more, each for what the
  phantoms showed: a "lesion" holding gas (`GAS_LESION_FRACTION` of it below `GAS_HU`) is bowel
  drawn as liver (liver tissue and its tumours hold none; an abscess with gas or an ablation
  zone would be dropped too, and is marked as a removed finding); and, when an MRI is given, a
  lesion and its rim both more than `MRI_CONFIRMED_RIM_SHIFT_HU` off the level whose MRI
  contrast against that rim is under `MIN_LESION_CONTRAST_MRI` (the MRI shows no lesion
  there): a neighbour 25-40 HU off the liver drawn onto it, and its edge called a lesion. The
  MRI's agreement is what lets the HU margin be half the CT-alone one. Also with an MRI: a
  lesion within `BESIDE_GAS_MM` of gas that both images show faintly is the partial-volume edge
  of a bowel loop (or the lung) drawn as a lesion.
* `lesions_without_contrast`: a lesion must differ from the liver around it on at least one
  image the reader gave. Its voxels' HU distribution is compared with its 3 mm liver rim's
  (1-D Wasserstein distance: a shift of the level, a scar, a rim or a mosaic all count, noise
  alone does not); under `MIN_LESION_CONTRAST_HU` on the CT and, when an MRI is given, under
  `MIN_LESION_CONTRAST_MRI` of the rim's median signal on it, no image shows the lesion: the
  network drew it from nothing a reader can check. On unseen synthetic cases those were all the
  fusion model's false positives and most of tam-unet's (README). Limit: a lesion that is truly
  isodense on both images (an FNH in the portal phase) is dropped when the network finds it; the
  report counts and warns about every drop, and ``--no-hu-checks`` keeps them.

* `dark_enclosed_holes`: the reverse case, a lesion the network missed outright. Where it labels
  a region background although the liver surrounds it on every side in 3D, the organ's hole
  filling used to make it liver without a word. Inside the liver only a lesion (or a vessel) can
  be there; a region at least `MIN_ENCLOSED_HOLE_MM` across whose median HU is
  `MIN_ENCLOSED_HOLE_DARKER_HU` or more below the liver's level is marked a lesion instead
  (vessels are brighter than the liver in the portal phase and run out of it: never enclosed;
  the gallbladder and IVC lie in the liver's surface, not inside it). Why: networks trained on
  phantoms took 22 and 35 mm water-density cysts on unseen phantoms for fluid outside the liver
  (README). Their edges are refined like any lesion's; the elongation check spares them and the
  lesions they join (postprocess._drop_elongated_lesions).
* `bright_enclosed_holes`: with an MRI, the same for a region 20 HU or more brighter than the
  liver on the CT and 30 % brighter than the liver around it on the MRI: a haemangioma the
  network took for a vessel (unseen phantoms). A vessel is dark on T2; these regions are judged by
  the elongation check like a drawn lesion.

All take `parenchyma` = the network's liver label (not tumour). Values and why: see
`PostprocessConfig` in postprocess.py; measured effect: README "On data the weights were not
made from".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from LiverTumorAILib.geometry import ellipsoid_structure, sphere_voxel_count

#: half-width of the band around the liver's HU level whose voxels count as liver-like
LIVER_BAND_HU = 15.0
#: smoothing of the HU before the region check: vessels and noise average out, organs do not
REGION_SIGMA_MM = 4.0
#: smallest region at the organ's surface that is removed as another organ
MIN_REGION_ML = 1.0
#: a lesion's rim "looks like the lesion" within this many HU (medians)
LESION_RIM_MATCH_HU = 30.0
#: thickness of the rim measured around a lesion
LESION_RIM_MM = 3.0
#: a lesion whose median HU is below this is fat
FAT_HU = -30.0
#: a fat "lesion" touching the outside of the liver over at least this fraction of its rim
#: is the fat around the liver, drawn at the partial-volume edge
FAT_OUTSIDE_FRACTION = 0.3
#: a lesion whose HU distribution is closer than this (1-D Wasserstein, HU) to its rim's is not
#: seen on the CT: about the least contrast a reader sees at 1 cm in portal-phase noise; on the
#: independent phantoms every found lesion had 12 HU or more, the isodense false positives 1-9
#: HU; on the project's held-out phantoms one found FNH (isodense by design) had 4 HU
MIN_LESION_CONTRAST_HU = 10.0
#: ... and on the MRI closer than this fraction of the rim's median signal (MRI has no units);
#: on the independent phantoms found lesions 0.17 and more, the isodense false positives 0.02-0.14
MIN_LESION_CONTRAST_MRI = 0.15
#: a lesion the MRI covers but does not show at all (contrast under this fraction of its rim's
#: signal) must show on the CT by at least `MIN_CONTRAST_HU_MRI_SILENT`: MRI shows liver lesions
#: at least as well as CT, so its silence is evidence against one and the CT must be clearer than
#: for a CT alone. Independent T2 draws (two, 32 cases, three models' final lesions): every lesion
#: matched to truth had 0.15 or more on the MRI; the two false lesions that passed the check (a
#: lesion-free case's 2 ml on 5 mm slices, a 2 ml one at the dome) had 0.05-0.06 on the MRI and
#: 11-12 HU on the CT. Both bounds sit halfway: about half the MRI's "shows it" bound, 1.5 x the CT's
MRI_SILENT_FRACTION = 0.08
MIN_CONTRAST_HU_MRI_SILENT = 15.0
#: fewest rim (and, on the MRI, in-field) voxels for a comparison; with fewer, a lesion is kept
MIN_RIM_VOXELS = 10
#: smallest region (equivalent-sphere diameter, mm) enclosed by the liver but labelled background
#: that `dark_enclosed_holes` marks as a lesion: the size from which detection is judged, and
#: above the width of the vessels a network may leave unlabelled inside the organ
MIN_ENCLOSED_HOLE_MM = 10.0
#: ... and how much darker than the liver's level (median HU) it must be: a metastasis's (L-30 and
#: darker on the phantoms) or a cyst's contrast, three noise levels of portal-phase CT
MIN_ENCLOSED_HOLE_DARKER_HU = 30.0
#: with an MRI, a region the liver encloses that the network left background, at least
#: `MIN_ENCLOSED_HOLE_MM` across, this much brighter than the liver's level on the CT ...
MIN_ENCLOSED_HOLE_BRIGHTER_HU = 20.0
#: ... and brighter than the liver around it on the MRI by this fraction of the liver's signal, is
#: a lesion the network missed (a haemangioma: bright on portal-phase CT and on T2), not a vessel
#: (dark on T2, a flow void; and a tube, which the elongation check then drops)
MIN_ENCLOSED_HOLE_BRIGHTER_MRI = 0.3
#: below this HU a voxel is gas (bowel, lung); fat is about -100
GAS_HU = -400.0
#: a lesion with this fraction of its voxels gas is bowel: on the unseen phantoms one such
#: "lesion" had 2.8 % gas (mean -65 HU), no found lesion had any
GAS_LESION_FRACTION = 0.01
#: with an MRI that shows no lesion there, a lesion and its rim both this far off the liver's level
#: lie in another tissue: on four sets of 16 phantoms (three draws of the independent generator
#: and the project's held-out 16; 394 lesions found by the three models) such lesions were all
#: false (a neighbour 24-42 HU brighter, a fat-edge rim 33-36 HU darker); the true ones with a rim
#: this far off were 80-120 HU darker than it, or shown by the MRI (0.8 and up). An MRI out of
#: register cannot trigger it alone: the CT must place the rim off the liver too
MRI_CONFIRMED_RIM_SHIFT_HU = 20.0
#: a voxel of a slice the slice check cut is not given back with gas this close (a bowel loop's wall)
GAS_MARGIN_MM = 5.0
#: with an MRI, a lesion with gas this close, that the CT shows faintly (under `BESIDE_GAS_MAX_CT_HU`)
#: and the MRI hardly (under `BESIDE_GAS_MAX_MRI_FRACTION`), is the partial-volume edge of a bowel
#: loop or of the lung drawn as a lesion: on four sets of 16 phantoms (three independent draws and
#: the project's held-out 16) the four such findings of the three models were all false (CT 11-19 HU,
#: MRI 0.06-0.15), and the 32 true-lesion findings this close to gas had MRI contrast 0.31 and more
#: (13 of them under 25 HU on the CT, so the MRI, not the CT, tells them apart). The margin is thin:
#: on a fifth set (seeds 7700-7715) a true 23 mm HCC beside bowel gas, as finally drawn (its outline
#: extended on the MRI), read 24 HU / 0.19; the check, run on the network's smaller outline, kept it
BESIDE_GAS_MM = 6.0
BESIDE_GAS_MAX_CT_HU = 25.0
BESIDE_GAS_MAX_MRI_FRACTION = 0.25
#: One lesion's rim (`lesion_rims`): component index, box, the component and its rim shell on the box.
LesionRim = tuple[int, tuple[slice, ...], np.ndarray, np.ndarray]


def liver_level_hu(values: np.ndarray) -> float:
    """The liver's own HU level: the mode of its parenchyma's histogram (5 HU bins, -100..300);
    NaN when no value falls in that range.

    A mode, not a median: when the network also labelled bowel, the liver is still the one
    narrow peak, while the bowel's HU spread out (content, wall, gas)."""
    counts, edges = np.histogram(values, bins=80, range=(-100.0, 300.0))
    if not counts.any():
        return float("nan")  # no parenchyma voxel in a liver's range: no level, no checks
    counts = np.convolve(counts, np.ones(3), mode="same")
    peak = int(np.argmax(counts))
    return float((edges[peak] + edges[peak + 1]) / 2.0)


def trim_slices_unlike_liver(
    organ: np.ndarray,
    parenchyma: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    axis: int = 0,
    max_shift_hu: float = 30.0,
    min_run_mm: float = 10.0,
) -> np.ndarray:
    """`organ` cut to its stretch of slices along `axis` (the head-foot axis) that look like liver.

    Per slice, the median HU of the organ's `parenchyma` voxels (the liver label, not tumour) is
    compared with the liver's level (`liver_level_hu`). Runs of slices whose median is more than
    `max_shift_hu` off for at least `min_run_mm` split the organ into stretches; the stretch
    holding the most parenchyma voxels within `LIVER_BAND_HU` of the level is kept, the rest of
    the organ is removed (the most liver-like voxels, not the most voxels: on a real scan to the
    pelvis, the bowel labelled as liver can outweigh the liver). Slices with too few
    parenchyma voxels for a median (the dome, the tip: under 2 % of the widest slice) neither
    start nor end a run. Returns `organ` itself when nothing is cut."""
    others = tuple(i for i in range(3) if i != axis)
    area = organ.sum(axis=others)
    if not area.any():
        return organ
    liver = parenchyma & organ
    min_voxels = max(20, int(0.02 * area.max()))
    level = liver_level_hu(ct_hu[liver])
    if not np.isfinite(level):
        return organ
    medians = np.full(organ.shape[axis], np.nan)
    liver_like = np.zeros(organ.shape[axis])
    for i in np.flatnonzero(liver.sum(axis=others) >= min_voxels):
        index = tuple(i if a == axis else slice(None) for a in range(3))
        inner = ndimage.binary_erosion(liver[index])  # without the partial-volume rim
        values = ct_hu[index][inner if np.count_nonzero(inner) >= min_voxels else liver[index]]
        medians[i] = np.median(values)
        liver_like[i] = np.count_nonzero(np.abs(values - level) <= LIVER_BAND_HU)
    measured = np.flatnonzero(np.isfinite(medians))
    if not len(measured):
        return organ
    unlike = np.abs(medians[measured] - level) > max_shift_hu
    cut = np.zeros(organ.shape[axis], dtype=bool)
    start = None
    for k in range(len(measured) + 1):
        if k < len(measured) and unlike[k]:
            start = k if start is None else start
            continue
        if start is not None:
            first, last = measured[start], measured[k - 1]
            if (last - first + 1) * float(spacing_zyx[axis]) >= min_run_mm:
                cut[first : last + 1] = True
            start = None
    if not cut.any():
        return organ
    stretch, count = ndimage.label(~cut)
    score = ndimage.sum_labels(liver_like, stretch, index=np.arange(1, count + 1))
    keep = stretch == int(np.argmax(score)) + 1
    shape = [1, 1, 1]
    shape[axis] = -1
    return organ & keep.reshape(shape)


def local_liver_hu(liver: np.ndarray, ct_hu: np.ndarray, spacing_zyx: Sequence[float], level: float) -> np.ndarray:
    """Local mean HU of the `liver` voxels around each voxel: a normalised Gaussian average
    (sigma `REGION_SIGMA_MM`) over `liver` only, HU clipped to `level` +- 150 so gas and bone do
    not dominate; the tumour label and the background never pull it. float32, `liver`'s shape."""
    sigma = [REGION_SIGMA_MM / float(s) for s in spacing_zyx]
    weight = ndimage.gaussian_filter(liver.astype(np.float32), sigma)
    clipped = np.clip(ct_hu, level - 150.0, level + 150.0).astype(np.float32)
    clipped[~liver] = 0.0
    local = ndimage.gaussian_filter(clipped, sigma)
    del clipped
    local /= np.maximum(weight, 1e-3)
    return local


def regrow_trimmed_ends(
    trimmed: np.ndarray,
    organ: np.ndarray,
    parenchyma: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    level: float,
    axis: int = 0,
    max_shift_hu: float = 40.0,
) -> np.ndarray:
    """`trimmed` (the slice check's result) with the liver it cut beyond its kept stretch's two
    end slices given back, slice by slice, where that liver goes on.

    Why: the slice check judges a whole slice by its median, so where the network drew bowel
    beside the liver's tip (or the heart beside its dome) it cut the liver's own part of those
    slices too: 2-6 slices on most unseen phantoms, a 26 mm cyst at a tip once. Going outward
    from each end, a slice keeps the 2-D components of `organ` that overlap what the slice before
    kept, counting as candidates only the voxels whose local HU (`local_liver_hu`) is within
    `max_shift_hu` of `level` and the non-parenchyma (tumour) voxels, none within `GAS_MARGIN_MM`
    of gas (`GAS_HU`): a bowel loop's wall sits at the liver's level (the colon at the liver's tip
    on a real CT to the pelvis), its gas does not. A slice whose kept area
    grows past the one before stops the walk (the liver tapers to its ends; the bowel, heart or
    colon beyond it do not), as does a slice with nothing kept. Returns `trimmed` itself when
    nothing is given back."""
    others = tuple(i for i in range(3) if i != axis)
    kept_slices = np.flatnonzero(trimmed.any(axis=others))
    if not len(kept_slices):
        return trimmed
    liver = parenchyma & organ
    liver_like = liver & (np.abs(local_liver_hu(liver, ct_hu, spacing_zyx, level) - level) <= max_shift_hu)
    candidates = organ & (liver_like | ~parenchyma)
    del liver, liver_like
    out = trimmed.copy()
    given_back = False
    in_plane_mm = [float(spacing_zyx[a]) for a in others]

    def plane(volume: np.ndarray, i: int) -> np.ndarray:
        return volume[tuple(i if a == axis else slice(None) for a in range(3))]

    for start, step in ((int(kept_slices[0]), -1), (int(kept_slices[-1]), 1)):
        previous = plane(trimmed, start)
        i = start + step
        while 0 <= i < organ.shape[axis] and not plane(trimmed, i).any():
            components, count = ndimage.label(plane(candidates, i) & ~_near_gas(plane(ct_hu, i), in_plane_mm))
            touching = np.unique(components[previous & (components > 0)])
            touching = touching[touching > 0]
            if not len(touching):
                break
            kept = np.isin(components, touching)
            if np.count_nonzero(kept) > np.count_nonzero(previous):
                break
            plane(out, i)[...] = kept
            given_back = True
            previous = kept
            i += step
    return out if given_back else trimmed


def _near_gas(ct_hu_plane: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
    """Pixels of a slice within `GAS_MARGIN_MM` of gas (`GAS_HU`): the wall of a bowel loop."""
    gas = ct_hu_plane < GAS_HU
    if not gas.any():
        return gas
    return ndimage.binary_dilation(gas, structure=ellipsoid_structure([GAS_MARGIN_MM / s for s in spacing_mm]))


def drop_regions_unlike_liver(
    organ: np.ndarray,
    parenchyma: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    level: float,
    max_shift_hu: float = 40.0,
) -> np.ndarray:
    """`organ` without the regions of `parenchyma` whose local mean HU is more than `max_shift_hu`
    from `level`, that touch the organ's outer surface and hold at least `MIN_REGION_ML`.

    The local mean is `local_liver_hu`. Returns `organ` itself when nothing is removed."""
    liver = parenchyma & organ
    unlike = liver & (np.abs(local_liver_hu(liver, ct_hu, spacing_zyx, level) - level) > max_shift_hu)
    labels, count = ndimage.label(unlike, structure=np.ones((3, 3, 3), bool))
    if count == 0:
        return organ
    surface = organ & ndimage.binary_dilation(~organ, border_value=1)
    index = np.arange(1, count + 1)
    volume_ml = ndimage.sum_labels(unlike, labels, index) * float(np.prod(spacing_zyx)) / 1000.0
    touches = ndimage.maximum(surface, labels, index) > 0
    remove = np.zeros(count + 1, dtype=bool)
    remove[1:] = (volume_ml >= MIN_REGION_ML) & touches
    if not remove.any():
        return organ
    return organ & ~remove[labels]


def lesion_rims(labels: np.ndarray, spacing_zyx: Sequence[float], candidates: np.ndarray | None = None
                ) -> Iterator[LesionRim]:
    """Per component of `labels` (index 0..count-1; only those `candidates[index]` is True for,
    when given): its box (the component's bounding box padded by `LESION_RIM_MM`), the component
    and the shell within `LESION_RIM_MM` around it, both on that box. The rim a check reads is
    `shell & parenchyma[box]`."""
    radius = [max(LESION_RIM_MM / float(s), 1.0) for s in spacing_zyx]
    pad = [int(np.ceil(r)) for r in radius]
    ball = ellipsoid_structure(radius)
    for i, box in enumerate(ndimage.find_objects(labels)):
        if box is None or (candidates is not None and not candidates[i]):
            continue
        box = tuple(slice(max(b.start - p, 0), min(b.stop + p, n)) for b, p, n in zip(box, pad, labels.shape))
        component = labels[box] == i + 1
        shell = ndimage.binary_dilation(component, structure=ball) & ~component
        yield i, box, component, shell


def _rims_of(labels: np.ndarray, spacing_zyx: Sequence[float], candidates: np.ndarray | None,
             rims: Sequence[LesionRim] | None) -> Iterable[LesionRim]:
    """`rims` (from one `lesion_rims` pass shared by several checks) restricted to `candidates`,
    or a fresh `lesion_rims` pass when none are given."""
    if rims is None:
        return lesion_rims(labels, spacing_zyx, candidates)
    return (rim for rim in rims if candidates is None or candidates[rim[0]])


def lesions_in_other_tissue(
    labels: np.ndarray,
    count: int,
    parenchyma: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    level: float,
    max_shift_hu: float = 40.0,
    outside: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    rims: Sequence[LesionRim] | None = None,
    mri: np.ndarray | None = None,
    min_mri_fraction: float = MIN_LESION_CONTRAST_MRI,
    wider: WiderCT | None = None,
) -> np.ndarray:
    """For each component 1..count of `labels`, whether it lies inside a tissue that is not liver:
    its own median HU and that of the `parenchyma` voxels within `LESION_RIM_MM` around it are
    both more than `max_shift_hu` from `level`, and within `LESION_RIM_MATCH_HU` of each other;
    or `GAS_LESION_FRACTION` of it is gas; or, with `mri` (same grid, NaN outside its field of
    view), both are more than `MRI_CONFIRMED_RIM_SHIFT_HU` off (and match) and the MRI shows no
    lesion against that rim (`mri_contrast_fraction` under `min_mri_fraction`); or, with `mri`,
    gas lies within `BESIDE_GAS_MM` and both images show it faintly (`_partial_volume_beside_gas`:
    the partial-volume edge of bowel or lung; the gas looked for in `wider` when given, so gas
    just past `ct_hu`'s faces counts).
    (A lesion drawn short of its edge has a rim of lesion; its core is then unlike the liver too
    only for strongly contrasting lesions, which the network draws fully: a held-out 23 ml
    hyperdense lesion drawn at 63 % had core 114, rim 138, level 97 HU, and is kept.)
    Components with fewer than 10 rim voxels are never flagged. With `outside` (the voxels
    outside the organ), a component of fat density with `FAT_OUTSIDE_FRACTION` of its rim outside
    is flagged too. `candidates` (bool per component): only those are checked (the others were
    dropped already), the rest are not flagged. `rims`: `lesion_rims(labels, spacing_zyx)` made
    once for several checks, so each lesion's rim is dilated once."""
    flagged = np.zeros(count, dtype=bool)
    for i, box, component, shell in _rims_of(labels, spacing_zyx, candidates, rims):
        own_values = ct_hu[box][component]
        own_hu = float(np.median(own_values))
        if outside is not None and own_hu < FAT_HU and shell.any() and outside[box][shell].mean() >= FAT_OUTSIDE_FRACTION:
            flagged[i] = True
            continue
        if np.mean(own_values < GAS_HU) >= GAS_LESION_FRACTION:
            flagged[i] = True
            continue
        rim = shell & parenchyma[box]
        if np.count_nonzero(rim) < MIN_RIM_VOXELS:
            continue
        if mri is not None and _partial_volume_beside_gas(box, component, rim, ct_hu, mri, spacing_zyx, wider):
            flagged[i] = True
            continue
        rim_hu = float(np.median(ct_hu[box][rim]))
        shift = min(abs(own_hu - level), abs(rim_hu - level))
        if abs(rim_hu - own_hu) > LESION_RIM_MATCH_HU:
            continue
        flagged[i] = shift > max_shift_hu or (
            mri is not None and shift > MRI_CONFIRMED_RIM_SHIFT_HU
            and mri_contrast_fraction(mri[box][component], mri[box][rim]) < min_mri_fraction)
    return flagged


@dataclass(frozen=True)
class WiderCT:
    """The CT around the array the checks read (which starts at index `offset` in it): what lies
    just past that array's faces, such as the lung's gas above a lesion at the liver's dome when
    the checks read the liver's bounding box."""

    ct_hu: np.ndarray
    offset: tuple[int, int, int]


def _partial_volume_beside_gas(box: tuple[slice, ...], component: np.ndarray, rim: np.ndarray, ct_hu: np.ndarray,
                               mri: np.ndarray, spacing_zyx: Sequence[float], wider: WiderCT | None = None) -> bool:
    """Whether the lesion `component` (with its liver `rim`, on `box` of `ct_hu`) has gas within
    `BESIDE_GAS_MM` (looked for in `wider` when given, else in `ct_hu`), CT contrast under
    `BESIDE_GAS_MAX_CT_HU` and MRI contrast under `BESIDE_GAS_MAX_MRI_FRACTION` against that rim.
    NaN MRI contrast (outside its field of view): not flagged. The gas is looked for last, on the
    box grown to that distance, only for lesions both images show faintly."""
    if not mri_contrast_fraction(mri[box][component], mri[box][rim]) < BESIDE_GAS_MAX_MRI_FRACTION:
        return False
    if not lesion_contrast(ct_hu[box][component], ct_hu[box][rim]) < BESIDE_GAS_MAX_CT_HU:
        return False
    source, offset = (wider.ct_hu, wider.offset) if wider is not None else (ct_hu, (0, 0, 0))
    pad = [int(np.ceil(BESIDE_GAS_MM / float(s))) for s in spacing_zyx]
    start = [b.start + o for b, o in zip(box, offset)]
    around = tuple(slice(max(a - p, 0), min(a + n + p, size))
                   for a, n, p, size in zip(start, component.shape, pad, source.shape))
    gas = source[around] < GAS_HU
    if not gas.any():
        return False
    lesion = np.zeros(gas.shape, dtype=bool)
    lesion[tuple(slice(a - r.start, a - r.start + n) for a, r, n in zip(start, around, component.shape))] = component
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing_zyx)
    return bool(np.any(gas & (distance <= BESIDE_GAS_MM)))


def mri_contrast_fraction(values: np.ndarray, rim_values: np.ndarray) -> float:
    """A lesion's contrast on the MRI: `lesion_contrast` of its `values` against `rim_values` as a
    fraction of the rim's median signal (MRI has no units; its absolute value, so an MRI
    normalised around 0 shows every lesion: inf). NaN where too few values are in its field of
    view to judge (NaN outside it)."""
    contrast = lesion_contrast(values, rim_values)
    if not np.isfinite(contrast):
        return float("nan")
    scale = abs(float(np.nanmedian(rim_values)))
    return contrast / scale if scale > 0 else float("inf")


def lesion_contrast(values: np.ndarray, rim_values: np.ndarray) -> float:
    """How far a lesion's values lie from its rim's: the 1-D Wasserstein (earth mover's) distance
    between the two distributions, in the image's units. NaN when either has under
    `MIN_RIM_VOXELS` finite values."""
    from scipy.stats import wasserstein_distance

    values, rim_values = (np.asarray(v, dtype=np.float64) for v in (values, rim_values))
    values, rim_values = values[np.isfinite(values)], rim_values[np.isfinite(rim_values)]
    if len(values) < MIN_RIM_VOXELS or len(rim_values) < MIN_RIM_VOXELS:
        return float("nan")
    return float(wasserstein_distance(values, rim_values))


def lesions_without_contrast(
    labels: np.ndarray,
    count: int,
    parenchyma: np.ndarray,
    ct_hu: np.ndarray,
    spacing_zyx: Sequence[float],
    min_ct_hu: float = MIN_LESION_CONTRAST_HU,
    mri: np.ndarray | None = None,
    min_mri_fraction: float = MIN_LESION_CONTRAST_MRI,
    outside: np.ndarray | None = None,
    candidates: np.ndarray | None = None,
    rims: Sequence[LesionRim] | None = None,
) -> np.ndarray:
    """For each component 1..count of `labels`, whether no image shows it: its `lesion_contrast`
    against its `parenchyma` rim is under `min_ct_hu` on the CT and, with `mri` (the MRI on the same
    grid, NaN outside its field of view), under `min_mri_fraction` x the rim's median signal on it
    (its absolute value: an MRI normalised around 0 shows every lesion, so it never drops one).
    Without enough rim voxels on the CT a lesion is kept (too little to judge); without enough
    on the MRI (outside its field of view) the CT alone decides. `outside` (the voxels the organ
    checks removed, or outside the organ) is no rim: a neighbour drawn as liver is not the liver
    a lesion must differ from. A lesion the MRI covers and does not show (under
    `MRI_SILENT_FRACTION`) must differ by `MIN_CONTRAST_HU_MRI_SILENT` on the CT. `candidates`,
    `rims`: as in `lesions_in_other_tissue`."""
    flagged = np.zeros(count, dtype=bool)
    for i, box, component, shell in _rims_of(labels, spacing_zyx, candidates, rims):
        rim = shell & parenchyma[box]
        if outside is not None:
            rim &= ~outside[box]
        ct_contrast = lesion_contrast(ct_hu[box][component], ct_hu[box][rim])
        if not (ct_contrast < max(min_ct_hu, MIN_CONTRAST_HU_MRI_SILENT)):  # clear on the CT (NaN: not judged): kept
            continue
        mri_fraction = mri_contrast_fraction(mri[box][component], mri[box][rim]) if mri is not None else np.nan
        if mri_fraction < MRI_SILENT_FRACTION and ct_contrast < MIN_CONTRAST_HU_MRI_SILENT:
            flagged[i] = True  # the MRI shows nothing there and the CT only faintly
        elif ct_contrast < min_ct_hu and not mri_fraction >= min_mri_fraction:
            flagged[i] = True  # no image shows it (outside the MRI's field of view, NaN, the CT alone decides)
    return flagged


def _large_components(mask: np.ndarray, spacing_zyx: Sequence[float], min_diameter_mm: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, large): `mask`'s components (26-connected) and, per component, whether it is at
    least `min_diameter_mm` across (equivalent sphere)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    return labels, np.bincount(labels.ravel(), minlength=count + 1)[1:] >= sphere_voxel_count(min_diameter_mm, spacing_zyx)


def bright_enclosed_holes(enclosed: np.ndarray, ct_hu: np.ndarray, level: float, spacing_zyx: Sequence[float],
                          parenchyma: np.ndarray, mri: np.ndarray,
                          min_diameter_mm: float = MIN_ENCLOSED_HOLE_MM,
                          min_brighter_hu: float = MIN_ENCLOSED_HOLE_BRIGHTER_HU,
                          min_brighter_mri: float = MIN_ENCLOSED_HOLE_BRIGHTER_MRI) -> np.ndarray:
    """Of `enclosed` (as in `dark_enclosed_holes`), the components at least `min_diameter_mm`
    across whose median HU is `min_brighter_hu` or more above `level` and whose median on `mri`
    (the MRI on the same grid, NaN outside its field of view) is above that of the `parenchyma`
    within `LESION_RIM_MM` around them by `min_brighter_mri` of it: a lesion bright on both
    images that the network took for a vessel and left unlabelled (unseen phantoms: 26 and 41 mm
    haemangiomas, 38-42 HU over the liver, 0.8-1.1 over it on the T2). A vessel is dark on T2 (and
    a tube: the elongation check judges these like any drawn lesion); on a T1 MRI a haemangioma is
    dark too, so there the rule finds none. Fewer than `MIN_RIM_VOXELS` in-field rim voxels: not
    judged."""
    out = np.zeros(enclosed.shape, dtype=bool)
    labels, large = _large_components(enclosed, spacing_zyx, min_diameter_mm)
    if not large.any():
        return out
    medians = np.asarray(ndimage.median(ct_hu, labels, index=np.arange(1, len(large) + 1)), dtype=float)
    bright = large & (medians >= level + min_brighter_hu)  # only these are dilated for their rim
    for _, box, component, shell in lesion_rims(labels, spacing_zyx, bright):
        rim_mri = mri[box][shell & parenchyma[box]]
        rim_mri = rim_mri[np.isfinite(rim_mri)]
        own_mri = mri[box][component]
        own_mri = own_mri[np.isfinite(own_mri)]
        if len(rim_mri) < MIN_RIM_VOXELS or len(own_mri) < MIN_RIM_VOXELS:
            continue
        rim_level = float(np.median(rim_mri))
        if rim_level > 0 and float(np.median(own_mri)) >= rim_level * (1.0 + min_brighter_mri):
            out[box] |= component
    return out


def dark_enclosed_holes(enclosed: np.ndarray, ct_hu: np.ndarray, level: float, spacing_zyx: Sequence[float],
                        min_diameter_mm: float = MIN_ENCLOSED_HOLE_MM,
                        min_darker_hu: float = MIN_ENCLOSED_HOLE_DARKER_HU) -> np.ndarray:
    """Of `enclosed` (voxels the network labelled background that its organ, liver + tumour,
    encloses in 3D: its 3D hole filling minus itself, inside the final organ), the components at
    least `min_diameter_mm` across (equivalent sphere) whose median HU is `min_darker_hu` or more
    below `level`: lesions it missed (module docstring). One whose mean is below `FAT_HU` holds
    fat or gas, not a lesion it missed: bowel drawn into the organ encloses its content, median
    15 HU but a quarter gas, mean -138 HU, on an independent phantom (the mean, not the median,
    sees the gas). An empty mask when there are none."""
    out = np.zeros(enclosed.shape, dtype=bool)
    labels, large = _large_components(enclosed, spacing_zyx, min_diameter_mm)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if not large[i - 1]:
            continue
        component = labels[box] == i
        values = ct_hu[box][component]
        if float(np.median(values)) <= level - min_darker_hu and float(np.mean(values)) >= FAT_HU:
            out[box] |= component
    return out
