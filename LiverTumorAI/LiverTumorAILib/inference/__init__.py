"""Whole-volume inference: device choice, liver localisation cascade, 2.5D slab inference."""
