"""Evaluation: metrics (:mod:`.metrics`) and pictures (:mod:`.plots`) of a trained model."""
