"""Retraining every LiverTumorAI model: datasets, augmentation, trainers, evaluation, export."""
