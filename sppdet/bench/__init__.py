"""Measuring speed: the timed detectors and the timing helpers."""
