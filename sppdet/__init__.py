"""sppdet: SPP-net object detection (He et al., 2014) as cached, resumable stages.

The library never imports click or rich; the command line lives in the ``cli`` package.
"""

__version__ = "0.1.0"
