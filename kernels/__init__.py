"""Fused Triton kernels of siglip_fast, one file per op, each with its eager PyTorch reference.

The package-level names are the public functionals (e.g. `siglip_fast.kernels.attention(q, k, v)`); the modules
(`siglip_fast.kernels.attention` as a module, for the launchers and references) stay importable with
`from siglip_fast.kernels.attention import attention_reference`.
"""

if __name__ == "siglip_fast.kernels":
    from .attention import attention, attention_reference
    from .layer_norm import layer_norm, layer_norm_reference
    from .linear import linear, linear_reference
    from .patch_embed import patch_embed, patch_embed_reference
    from .sigmoid_loss import sigmoid_loss, sigmoid_loss_blockwise, sigmoid_loss_reference

    __all__ = [
        "attention",
        "attention_reference",
        "layer_norm",
        "layer_norm_reference",
        "linear",
        "linear_reference",
        "patch_embed",
        "patch_embed_reference",
        "sigmoid_loss",
        "sigmoid_loss_blockwise",
        "sigmoid_loss_reference",
    ]
else:
    # This folder was imported as a top-level `kernels` module: the checkout's root is on sys.path (`python -m`
    # from the repository root), and `kernels` is also the name of a PyPI package that other libraries probe for
    # (transformers does, at import). Stay empty: importing the kernel modules again under this second name would
    # register their torch custom ops a second time, and the dispatcher then crashes on the stale registration.
    __all__ = []
