"""Warnings for results that cannot be a real liver.

A model applied to scans unlike its training data (the demo weights on a real CT, weights
trained elsewhere on a different protocol) fails without any error: it draws the colon as
liver, the liver as tumour, fat as lesions. These checks look only at the result's sizes and
densities and say so in plain language (report.json `warnings`); they change nothing.
"""

from __future__ import annotations

#: An adult liver is about 1-2 l on CT volumetry: under 0.5 l the segment holds only part of
#: a liver (or none), over 5 l (more than massive hepatomegaly) other organs were drawn as liver.
MIN_LIVER_ML = 500.0
MAX_LIVER_ML = 5000.0
#: A liver more than 80 % tumour could not keep a patient alive: the liver itself was drawn as tumour.
MAX_TUMOUR_BURDEN_PERCENT = 80.0
#: Fat is -150..-50 HU and air -1000; the darkest usual liver lesions (cysts, necrosis) lie near 0-30 HU.
MIN_LESION_MEAN_HU = -50.0

_WEIGHTS_MAY_NOT_SUIT = "the weights may not suit this scan"


def plausibility_warnings(organ: dict, lesions: list[dict]) -> list[str]:
    """Plain-language warnings when the result cannot be a real liver (see the constants above):
    a model applied to scans unlike its training data fails this way, without any error."""
    warnings = []
    liver_ml = float(organ.get("liver_volume_ml") or 0.0)
    if liver_ml <= 0:
        warnings.append(f"no liver was found: the result is implausible for an abdominal CT; {_WEIGHTS_MAY_NOT_SUIT}")
    elif liver_ml < MIN_LIVER_ML:
        warnings.append(f"liver volume {liver_ml:.0f} ml is implausibly small (below {MIN_LIVER_ML:.0f} ml; an adult "
                        f"liver is about 1000-2000 ml): the scan may cover only part of the liver, or "
                        f"{_WEIGHTS_MAY_NOT_SUIT}; check the liver segment")
    elif liver_ml > MAX_LIVER_ML:
        warnings.append(f"liver volume {liver_ml:.0f} ml is implausibly large (above {MAX_LIVER_ML:.0f} ml): other "
                        f"organs were probably drawn as liver and {_WEIGHTS_MAY_NOT_SUIT}; check the liver segment")
    burden = float(organ.get("tumour_burden_percent") or 0.0)
    if burden > MAX_TUMOUR_BURDEN_PERCENT:
        warnings.append(f"tumour burden {burden:.0f} % is implausible (above {MAX_TUMOUR_BURDEN_PERCENT:.0f} %): liver "
                        f"was probably drawn as tumour and {_WEIGHTS_MAY_NOT_SUIT}; check the lesions")
    airy = [row for row in lesions if row.get("mean_hu") is not None and row["mean_hu"] < MIN_LESION_MEAN_HU]
    if airy:
        which = ", ".join(f"{row['id']} ({row['mean_hu']:.0f} HU)" for row in airy)
        warnings.append(f"lesion(s) {which} have a mean below {MIN_LESION_MEAN_HU:.0f} HU, the density of fat or air, "
                        f"not of a liver lesion: the result is implausible and {_WEIGHTS_MAY_NOT_SUIT}")
    return warnings
