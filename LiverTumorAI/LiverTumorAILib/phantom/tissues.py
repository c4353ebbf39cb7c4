"""Per-case tissue intensities for CT (HU), T2- and T1-weighted MRI (arbitrary units).

CT is a portal-venous phase scan; the contrast timing varies per case through an
enhancement factor e in [0.75, 1.25] that scales the iodine uptake of blood and
enhancing organs (so aorta 140-220 HU, portal/hepatic veins 130-200, spleen 95-130).
Values (means; each case draws within the ranges):
- air -1000, lung -870..-820, fat -120..-80, muscle 40-60, CSF/bile/fluid 0-15,
  cancellous bone 200-350, cortical bone 700-1200, rib 350-700 (thin, partial volume),
- liver 95-130 (fatty 35-70: steatosis lowers HU about 1.5 HU per % fat;
  cirrhotic 75-110 and heterogeneous), kidney cortex 150-210, stomach/bowel wall 50-90.
MRI T2 (fast spin echo, no fat suppression; liver ~ 100): fat 250-380 (bright),
spleen 150-210 > liver 80-110, kidney 170-230, muscle 55-75, fluid 500-800,
vessels 20-120 (flow voids to slow flow), bone cortex / air ~ 0-10, marrow 150-250.
MRI T1 (in-phase GRE): fat 300-400, liver 150-200 > spleen 100-130, fluid 30-60.
Lesion intensities are set relative to these in `lesions.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import numpy as np

MODALITIES = ("ct", "t2", "t1")


@dataclass
class Tissues:
    """tissue name -> {modality: mean intensity}; plus case-level flags."""

    table: Dict[str, Dict[str, float]] = field(default_factory=dict)
    fatty: bool = False
    cirrhotic: bool = False
    enhancement: float = 1.0

    def get(self, name: str, modality: str) -> float:
        return self.table[name][modality]

    def set(self, name: str, ct: float, t2: float, t1: float) -> None:
        self.table[name] = {"ct": float(ct), "t2": float(t2), "t1": float(t1)}


def sample_tissues(rng: np.random.Generator, fatty: bool, cirrhotic: bool) -> Tissues:
    u = rng.uniform
    e = u(0.75, 1.25)
    t = Tissues(fatty=fatty, cirrhotic=cirrhotic, enhancement=e)
    t.set("air", -1000, u(0, 4), u(0, 4))
    t.set("lung", u(-870, -820), u(5, 15), u(5, 15))
    t.set("fat", u(-120, -80), u(250, 380), u(300, 400))
    t.set("muscle", u(40, 60), u(55, 75), u(90, 120))
    t.set("diaphragm", u(45, 65), u(55, 75), u(90, 120))
    t.set("bone_cortex", u(700, 1200), u(3, 15), u(3, 15))
    t.set("bone", u(200, 350), u(150, 250), u(250, 350))
    t.set("rib", u(350, 700), u(60, 150), u(150, 250))
    t.set("cartilage", u(90, 160), u(80, 120), u(80, 120))
    t.set("disc", u(70, 100), u(180, 300), u(80, 110))
    t.set("csf", u(0, 15), u(550, 800), u(30, 60))
    blood = u(150, 190) * e
    t.set("aorta", blood + u(-10, 20), u(15, 60), u(30, 120))
    t.set("ivc", blood * u(0.8, 0.95), u(20, 120), u(40, 140))
    t.set("portal", blood * u(0.95, 1.1), u(30, 120), u(40, 140))
    t.set("hepatic_vein", blood * u(0.85, 1.05), u(30, 120), u(40, 140))
    t.set("heart", blood * u(0.9, 1.0), u(30, 100), u(60, 140))
    t.set("myocardium", u(60, 100), u(60, 80), u(100, 130))
    if fatty:
        liver_ct, liver_t2, liver_t1 = u(35, 70), u(100, 130), u(170, 230)
    elif cirrhotic:
        liver_ct, liver_t2, liver_t1 = u(75, 110), u(85, 120), u(140, 185)
    else:
        liver_ct, liver_t2, liver_t1 = u(95, 130) * (0.85 + 0.15 * e), u(80, 110), u(160, 210)
    t.set("liver", liver_ct, liver_t2, liver_t1)
    t.set("spleen", u(95, 130) * (0.8 + 0.2 * e), u(150, 210), u(95, 125))
    t.set("kidney_cortex", u(150, 210) * e, u(170, 230), u(100, 140))
    t.set("kidney_medulla", u(110, 170) * e, u(200, 260), u(80, 110))
    t.set("urine", u(0, 20), u(600, 800), u(30, 50))
    t.set("stomach_wall", u(60, 100), u(90, 130), u(100, 130))
    t.set("bowel_wall", u(50, 90), u(90, 130), u(100, 130))
    t.set("fluid", u(0, 20), u(450, 700), u(30, 60))
    t.set("faeces", u(-80, 40), u(100, 200), u(100, 200))
    t.set("oral_contrast", u(200, 450), u(300, 600), u(60, 120))
    t.set("gallbladder", u(0, 20), u(500, 800), u(30, 150))
    t.set("bile_duct", u(5, 25), u(450, 700), u(30, 60))
    t.set("ascites", u(0, 15), u(500, 750), u(30, 50))
    t.set("pancreas", u(80, 120), u(90, 130), u(140, 190))
    t.set("adrenal", u(40, 70), u(80, 110), u(100, 130))
    return t
