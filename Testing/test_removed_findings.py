"""removed_findings: the located findings of report.json in one list, robust to a damaged report."""

from __future__ import annotations

from LiverTumorAILib.removed_findings import MRI_VESSEL_REASON, RemovedFinding, removed_findings


def test_lists_hu_check_and_mri_assist_findings_in_order():
    report = {
        "hu_checks": {"lesions_without_contrast_ml": [0.8, 1.5],
                      "lesions_without_contrast_centroids_ras": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]],
                      "elongated_lesions_ml": [3.35], "elongated_lesions_centroids_ras": [[-7.0, 8.5, 9.0]]},
        "mri_lesion_assist": {"findings_removed_as_vessels": [{"centroid_ras": [0.0, 0.0, 1.0], "volume_ml": 0.5}]},
    }
    found = removed_findings(report)
    assert [f.centroid_ras for f in found] == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (-7.0, 8.5, 9.0), (0.0, 0.0, 1.0)]
    assert [f.volume_ml for f in found] == [0.8, 1.5, 3.35, 0.5]
    assert found[-1] == RemovedFinding(MRI_VESSEL_REASON, (0.0, 0.0, 1.0), 0.5)
    assert found[2].label == "removed: shaped like a vessel (3.35 ml)"


def test_nothing_removed_or_an_old_report_gives_no_findings():
    assert removed_findings({}) == []
    assert removed_findings({"hu_checks": {"enabled": False}, "mri_lesion_assist": None}) == []
    # a report from before centres were noted: counts and volumes only
    assert removed_findings({"hu_checks": {"elongated_lesions_removed": 1, "elongated_lesions_ml": [2.0]}}) == []


def test_damaged_entries_are_skipped_and_the_rest_kept():
    report = {
        "hu_checks": {"elongated_lesions_ml": [1.0, "x", 2.0, 3.0],
                      "elongated_lesions_centroids_ras": [[1, 2, 3], [1, 2, 3], [1, 2], [float("nan"), 0, 0]],
                      "lesions_without_contrast_ml": 5, "lesions_without_contrast_centroids_ras": "abc"},
        "mri_lesion_assist": {"findings_removed_as_vessels": [None, {"volume_ml": 1.0}, {"centroid_ras": [0, 0, 0],
                                                                                          "volume_ml": 0.25}]},
    }
    assert [(f.centroid_ras, f.volume_ml) for f in removed_findings(report)] == [((1.0, 2.0, 3.0), 1.0),
                                                                                  ((0.0, 0.0, 0.0), 0.25)]
    assert removed_findings({"hu_checks": [1, 2], "mri_lesion_assist": "oops"}) == []
