"""Parallax backend: one masked-diffusion model over RGB, depth and camera-ray tokens."""

__version__ = "0.1.0"
