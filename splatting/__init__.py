"""Gaussian models (3D, 2D surfels, 2D image Gaussians), densification and trainers."""
