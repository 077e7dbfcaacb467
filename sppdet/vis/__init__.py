"""Pictures of results: annotated images and precision-recall curves."""
