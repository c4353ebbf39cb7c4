"""Export of a result for planning: .seg.nrrd, NIfTI labelmap, DICOM SEG, STL/OBJ, HTML report.

Heavy dependencies (highdicom, matplotlib, slicer) are imported by the exporter that needs them.
"""

from .run import FORMATS, run_export

__all__ = ["FORMATS", "run_export"]
