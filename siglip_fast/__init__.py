"""siglip_fast: a fast, faithful SigLIP for PyTorch."""
