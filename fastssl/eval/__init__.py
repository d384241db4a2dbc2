"""Evaluation: weighted kNN on frozen features, encoder export."""
