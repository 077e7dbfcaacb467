"""Scoring detections: VOC AP exactly as the devkit, and detections on disk."""
