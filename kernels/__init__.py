"""Fused Triton kernels of siglip_fast, one file per op, each with its eager reference."""
