"""facekd: distil a large face-recognition model (IResNet/ArcFace) into MobileFaceNet.

See README.md for the workflow and docs/DESIGN.md for how the modules fit together.
"""
__version__ = "0.1.0"
