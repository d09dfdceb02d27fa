"""facedistill: distill face-recognition teachers into small students and ship them to edge boxes."""

__version__ = "0.1.0"
