"""heatmaps."""
