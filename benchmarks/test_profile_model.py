"""The profiler breakdown script (benchmarks/profile_model.py): kernel-name categories and a CPU run end to end."""

from __future__ import annotations

import pytest
import torch

from benchmarks import profile_model


@pytest.mark.parametrize("name, expected", [
    ("_attention_fwd_kernel", "attention"),
    ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 32, 4>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
    ("void cunn_SoftMaxForward<8, float>", "attention"),
    ("_layer_norm_fwd_kernel", "layer_norm"),
    ("triton_per_fused_native_layer_norm_0", "layer_norm"),
    ("_patch_embed_fwd_kernel", "patch_embed"),
    ("_linear_fwd_kernel", "fused_linear"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64", "gemm"),
    ("nvjet_tst_192x192_64x4_2x1_v_bz_coopB_TNT", "gemm"),
    ("aten::addmm", "gemm"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::GeluCUDAKernelImpl>", "gelu"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>", "elementwise"),
    ("triton_red_fused_sum_3", "reduction"),
    ("some_new_kernel", "other"),
])
def test_kernel_categories(name, expected):
    assert profile_model.category(name) == expected


def test_cuda_totals_count_each_kernel_once():
    """A CPU operator's self device time is its kernels' time: only the device events may count."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(key, device_type, us, count):
        return SimpleNamespace(key=key, device_type=device_type, self_device_time_total=us, self_cpu_time_total=5.0,
                               count=count)

    events = [
        event("siglip_fast::layer_norm", DeviceType.CPU, 40.0, 4),  # launched the kernel below
        event("_layer_norm_fwd_kernel", DeviceType.CUDA, 40.0, 4),
        event("aten::mm", DeviceType.CPU, 100.0, 2),
        event("sm90_xmma_gemm_bf16bf16_bf16f32", DeviceType.CUDA, 100.0, 2),
        event("cudaLaunchKernel", DeviceType.CPU, 0.0, 6),
    ]
    totals = profile_model.category_totals(events, "cuda", steps=2)
    assert totals == {"layer_norm": (20.0, 2.0, (20.0, "_layer_norm_fwd_kernel")),
                      "gemm": (50.0, 1.0, (50.0, "sm90_xmma_gemm_bf16bf16_bf16f32"))}
    cpu = profile_model.category_totals(events, "cpu", steps=1)
    assert cpu == {"gemm": (5.0, 2.0, (5.0, "aten::mm"))}


def test_profile_step_totals():
    x = torch.randn(64, 64)
    result = profile_model.profile_step(lambda: torch.nn.functional.gelu(x @ x + 1), torch.device("cpu"), 2)
    cats = result["categories"]
    assert {"gemm", "gelu"} <= set(cats)
    assert result["kernel_ms"] == pytest.approx(sum(us for us, _, _ in cats.values()) / 1e3)
    assert result["wall_ms"] > 0 and cats["gemm"][1] >= 1
    with pytest.raises(ValueError, match="steps"):
        profile_model.profile_step(lambda: None, torch.device("cpu"), 0)


def test_main_prints_one_table_per_implementation(capsys):
    assert profile_model.main(["--variant", "tiny", "--batch", "2", "--impl", "eager", "--impl", "sdpa",
                               "--steps", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "tiny vision tower, batch 2, float32, inference" in out
    for impl in ("eager", "sdpa"):
        assert f"\n{impl}: kernel time" in out
    assert out.count("ms/layer") == 2 and "gemm" in out
    with pytest.raises(SystemExit):
        profile_model.main(["--variant", "tiny", "--impl", "triton-graph", "--train", "--device", "cpu"])
