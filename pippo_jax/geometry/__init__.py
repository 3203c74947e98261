"""Geometry (NumPy, host side): cameras in one convention (see cameras.py), Plücker
rays, Spatial Anchor images, orbits, scene normalisation and triangulation."""
