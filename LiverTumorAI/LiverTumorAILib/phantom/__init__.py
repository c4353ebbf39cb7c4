"""Synthetic abdominal CT + MRI phantoms with liver, lesion labels and truth.

The only training data of the project, so the generator aims at variety and at
realistic confounders rather than at pretty pictures. One physical description of a
patient (signed-distance structures in mm, `anatomy.py`, `lesions.py`) is rendered on
two independent grids: the CT grid (labels, lesion instances, HU) and the MRI grid
(own spacing, field of view, origin and direction), so both are aligned in physical
LPS space without any resampling.

API::

    case = generate_case(seed, size=256, slices=64, **overrides)
    write_case(case, folder)           # ct/mri/label/lesions .nii.gz + truth.json
    generate_cohort(out_dir, count, seed=0, size=256, slices=64, **overrides)

Overrides: spacing=(x, y, z) mm of the CT; n_lesions=int or (lo, hi);
lesion_types=[...] subset of TYPES; lesion_diameters=(lo, hi) mm; flip / direction = 'identity' | 'ras' |
'flip_z' | 'flip_x' | 'flip_all' | 'oblique' | 9 numbers; mri_sequence='t2' | 't1';
with_mri=bool; noise=CT noise SD in HU; fatty / cirrhotic / artefacts = bool;
plain_lesions=fraction of lesions with a flat CT look (training variety; default 0);
subtle_lesions=fraction with a near-isodense or flat bright CT look (likewise);
bright_lesions=fraction with the flat bright look only, 20-80 HU over the liver (likewise);
mri_spacing, mri_direction (as for the CT); debug=True adds `case.debug` (tissue map
with names, noise-free CT).

Labels: label 0 background, 1 liver (incl. intrahepatic vessels and bile ducts; IVC
and gallbladder excluded), 2 tumour (always inside the liver envelope); lesion
instance k in `lesions` is `truth["lesions"][k-1]`. Lesions entirely outside the CT
field of view are dropped from both.
"""

from .cohort import GENERATOR, VERSION, PhantomCase, case_seed, generate_case, generate_cohort, write_case
from .lesions import CLASS, TYPES

__all__ = ["PhantomCase", "generate_case", "write_case", "generate_cohort", "case_seed", "GENERATOR", "VERSION",
           "TYPES", "CLASS"]
