"""Pipelines: runs that chain several stages (``sppdet train``; the settings chosen on a validation
split; the proposals and features a split needs before ``eval``). A stage never imports another
stage; what chains them lives here (tests/test_layers.py)."""
