"""Kernels: spatial pyramid pooling and image views, one concept a module."""
