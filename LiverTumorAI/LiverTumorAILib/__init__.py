"""LiverTumorAI engine: liver/tumour segmentation, lesion classification and heatmaps.

Importable without 3D Slicer. Heavy dependencies (torch, monai) are imported lazily by
the modules that need them so that importing this package stays cheap inside Slicer.
"""

__version__ = "0.1.0"

#: Shown wherever bundled demo weights are used (CLI, report.json, Slicer panel, README).
DEMO_WEIGHTS_NOTICE = (
    "demo weights trained on synthetic phantoms - not for clinical use; "
    "retrain on real data (LiTS / 3D-IRCADb / MSD Task03 / CHAOS) with training/"
)
