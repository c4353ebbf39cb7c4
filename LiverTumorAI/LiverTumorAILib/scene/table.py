"""Lesion table node: the same numbers as report.json's lesions list."""

from __future__ import annotations

from typing import Any, Mapping

import slicer
import vtk

#: (column, vtk array class, report key); 'model' comes from the report's models, led by the
#: model that found the lesion where that is not the segmentation model (MRI lesion assist).
COLUMNS = [
    ("id", vtk.vtkIntArray, "id"),
    ("volume_ml", vtk.vtkDoubleArray, "volume_ml"),
    ("longest_diameter_mm", vtk.vtkDoubleArray, "longest_diameter_mm"),
    ("mean_hu", vtk.vtkDoubleArray, "mean_hu"),
    ("malignancy_probability", vtk.vtkDoubleArray, "malignancy_probability"),
    ("class", vtk.vtkStringArray, "predicted_class"),
    ("model", vtk.vtkStringArray, None),
    # why a call is unreliable or made otherwise (too small, at the border, MRI set aside as T1-like)
    ("note", vtk.vtkStringArray, "note"),
]


def _cell(lesion: Mapping[str, Any], key: str, cls: type) -> Any:
    value = lesion.get(key)
    if cls is vtk.vtkStringArray:
        return "" if value is None else str(value)
    if value is None:
        return float("nan") if cls is vtk.vtkDoubleArray else 0
    return int(value) if cls is vtk.vtkIntArray else float(value)


def _model_cell(lesion: Mapping[str, Any], model: str, report: Mapping[str, Any]) -> str:
    from ..inference.mri_assist import mri_assist_note

    note = mri_assist_note(lesion, report)
    return f"{note}; {model}" if note else model


def create_lesion_table(
    scene: slicer.vtkMRMLScene, report: Mapping[str, Any], name: str, *, model: str = ""
) -> slicer.vtkMRMLTableNode:
    """One row per lesion; missing values (e.g. --no-classify) become NaN / empty."""
    from .terminology import model_tag

    model = model or model_tag(report)
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    table = node.GetTable()
    lesions = list(report.get("lesions") or [])
    for column, cls, key in COLUMNS:
        array = cls()
        array.SetName(column)
        for lesion in lesions:
            array.InsertNextValue(_model_cell(lesion, model, report) if key is None else _cell(lesion, key, cls))
        table.AddColumn(array)
    node.SetUseColumnTitleAsColumnHeader(True)
    node.SetColumnUnitLabel("volume_ml", "ml")
    node.SetColumnUnitLabel("longest_diameter_mm", "mm")
    node.SetColumnUnitLabel("mean_hu", "HU")
    node.Modified()
    return node


def table_rows(table_node: slicer.vtkMRMLTableNode) -> list[dict[str, Any]]:
    """Rows as dicts keyed by column name (numbers as int/float, text as str)."""
    table = table_node.GetTable()
    rows = []
    for r in range(table.GetNumberOfRows()):
        row = {}
        for c in range(table.GetNumberOfColumns()):
            column = table.GetColumn(c)
            value = column.GetValue(r)
            if isinstance(column, vtk.vtkStringArray):
                row[column.GetName()] = str(value)
            elif isinstance(column, vtk.vtkIntArray):
                row[column.GetName()] = int(value)
            else:
                row[column.GetName()] = float(value)
        rows.append(row)
    return rows
