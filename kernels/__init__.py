"""Triton kernels, each beside its pure-torch reference and a dispatcher (Triton on CUDA, torch elsewhere)."""
