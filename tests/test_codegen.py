"""The Hopper code-generation gate: what the kernels compile to for sm_90, checked on CPU.

One session fixture runs `python -m benchmarks.codegen --json` once in a subprocess without TRITON_INTERPRET (this
suite's conftest switches the interpreter on, and the kernels must be compiled, not interpreted): every kernel variant
one training step launches at the target shapes, compiled for sm_90 with the installed triton and read from its SASS.
Each invariant is one test over that JSON. The parser and the checker are tested on known-bad input as well, so the
gate can be seen to fail.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import codegen

ROOT = Path(__file__).resolve().parents[1]
GATE_TIMEOUT_S = 1500


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.fixture(scope="session")
def report(tmp_path_factory) -> dict:
    """The tool's JSON for the default targets (all four, bf16, and fp16 at So400m)."""
    pytest.importorskip("triton")
    path = tmp_path_factory.mktemp("codegen") / "codegen.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.codegen", "--quiet", "--json", str(path)], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=GATE_TIMEOUT_S)
    print(proc.stdout[-6000:])
    if not path.exists():
        pytest.fail(f"benchmarks.codegen wrote no JSON (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(path.read_text())
    result["returncode"] = proc.returncode
    return result


def _fail_message(failures: list[str]) -> str:
    shown = "\n  ".join(failures[:60])
    more = f"\n  ... and {len(failures) - 60} more" if len(failures) > 60 else ""
    return f"{len(failures)} failures:\n  {shown}{more}"


# ----------------------------------------------------------------------------------------------------------------
# The parser and the checker on known input: the gate can fail
# ----------------------------------------------------------------------------------------------------------------
BAD_SASS = """
        /*0120*/                   LDG.E.U16 R4, desc[UR6][R2.64] ;                     /* 0x0000000602047981 */
        /*0130*/               @!P0 LDG.E.U16.CONSTANT R5, desc[UR6][R2.64+0x2] ;       /* 0x0000080602058981 */
        /*0140*/                   LDG.E.S16 R6, desc[UR6][R2.64+0x4] ;                 /* 0x0000100602067981 */
        /*0150*/                   HMMA.16816.F32.BF16 R8, R12, R16, R8 ;               /* 0x000000100c08723c */
        /*0160*/                   STL.64 [R1+0x8], R8 ;                                /* 0x0000080801007387 */
        /*0170*/                   LDL R9, [R1+0xc] ;                                   /* 0x00000c0001097983 */
        /*0180*/                   STG.E.U16 desc[UR6][R2.64], R4 ;                     /* 0x0000000402007986 */
        /*0190*/                   LDGSTS.E.64 [R3], desc[UR6][R4.64] ;                 /* 0x0000000004037fae */
"""
GOOD_SASS = """
        /*0200*/                   LDGSTS.E.BYPASS.128 [R3], desc[UR6][R4.64] ;         /* 0x0000000004037fae */
        /*0210*/              @P1  LDGSTS.E.BYPASS.LTC128B.128 [R3+0x800], desc[UR6][R6.64] ; /* 0x00800000060 */
        /*0220*/                   LDGSTS.E.128 [R3+0x1000], desc[UR6][R8.64] ;         /* 0x0100000008037fae */
        /*0230*/                   UTMALDG.2D [UR8], [UR4] ;                            /* 0x00000008040075b4 */
        /*0240*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ, !UPT ;  /* 0x00e00000041879f0 */
        /*0250*/                   LDG.E.128 R4, desc[UR6][R2.64] ;                     /* 0x0000000602047981 */
        /*0260*/                   STG.E.128 desc[UR6][R2.64], R4 ;                     /* 0x0000000402007986 */
        /*0270*/                   LDG.E.U8 R4, desc[UR6][R2.64] ;                      /* 0x0000000602047981 */
"""


def test_sass_parser_flags_known_bad_code():
    c = codegen.analyze_sass(BAD_SASS)
    assert (c["ldg16"], c["stg16"], c["hmma"], c["stl"], c["ldl"], c["ldgsts_narrow"]) == (3, 1, 1, 1, 1, 1), c
    assert (c["hgmma"], c["ldgsts128"], c["utmaldg"]) == (0, 0, 0), c
    assert c["instructions"] == 8


def test_sass_parser_counts_good_code():
    c = codegen.analyze_sass(GOOD_SASS)
    assert (c["hgmma"], c["ldgsts128"], c["utmaldg"]) == (1, 3, 1), c
    assert (c["ldg16"], c["stg16"], c["hmma"], c["stl"], c["ldl"], c["ldgsts_narrow"]) == (0,) * 6, c


def test_res_usage_parser():
    text = ("Resource usage:\n Function _attention_fwd_kernel:\n  REG:255 STACK:48 SHARED:0 LOCAL:40 "
            "CONSTANT[0]:628 TEXTURE:0 SURFACE:0 SAMPLER:0\n")
    assert codegen.parse_res_usage(text) == {"regs": 255, "stack": 48, "static_shared": 0, "local": 40}
    with pytest.raises(ValueError):
        codegen.parse_res_usage("no such line")


def _variant(kernel="attention_fwd", target="so400m", dtype="bf16", config="c", shared=1024, warps=8, **counts):
    v = dict(kernel=kernel, target=target, dtype=dtype, key={"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": warps},
             spec={"one": [], "not16": []}, config=config, shared=shared, num_warps=warps, num_stages=3, regs=128)
    v.update(dict.fromkeys(codegen.SASS_COUNTS, 0), hgmma=4)
    v.update(counts)
    return v


def test_checker_flags_each_invariant():
    limit = codegen.SHARED_LIMIT[90]
    good = _variant()
    result = {"arch": 90, "errors": [], "kernels": None, "variants": [
        good,
        _variant(config="c16", ldg16=8),  # (a)
        _variant(dtype="fp32", config="c32", ldg16=8),  # fp32: not in (a)'s scope
        _variant(config="cmma", hgmma=0, hmma=16),  # (b)
        _variant(kernel="attention_bwd_q", config="s1", stl=3, ldl=3),  # (c): its only variant spills ...
        _variant(kernel="attention_bwd_q", config="s2", shared=limit + 1),  # ... or does not fit
        _variant(config="big", shared=limit + 1),  # (d): never fits
    ], "autotune": {"attention_fwd": {"configs": ["c", "c16", "cmma", "big", "pruned"],
                                      "kept": {"so400m/bf16": ["c", "c16", "cmma", "big"]}}}}
    fails = codegen.check_invariants(result)
    assert len(fails["a_no_scalar_16bit"]) == 1 and "[" in fails["a_no_scalar_16bit"][0]
    assert len(fails["b_wgmma"]) == 1
    assert fails["c_spill_free_fits"] == [f"attention_bwd_q so400m/bf16: none of 2 variants is spill-free and "
                                          f"within {limit // 1024} KiB shared"]
    assert sorted(f.split(":")[1].strip() for f in fails["d_no_dead_config"]) == [
        "over the shared-memory limit wherever it survives pruning", "pruned at every target shape"]
    result["variants"] = [good]
    result["autotune"]["attention_fwd"]["configs"] = ["c"]
    assert not any(codegen.check_invariants(result).values())


def test_ttgir_loads_and_the_vector_operand_rule():
    """16-bit loads of a vector operand (a bias) are allowed one each; a 16-bit load of a tile is not; in a kernel
    that loads uint8 tiles 16-bit loads are pixel pairs; a 16-bit store always fails."""
    ttgir = """
    %a = tt.load %p0 : tensor<128x64x!tt.ptr<bf16>, #blocked>
    %b = tt.load %p1, %m1, %o1 : tensor<256x!tt.ptr<bf16>, #blocked1>
    %c = tt.load %p2 : !tt.ptr<f32>
    %d = tt.load %p3, %m3 : tensor<128x64x!tt.ptr<i8>, #blocked2>
    """
    assert codegen.analyze_ttgir(ttgir) == {"vector16_loads": 1, "byte_loads": 1}
    bias_only = _variant(ldg16=1, vector16_loads=1)
    tile = _variant(ldg16=2, vector16_loads=1)
    pixels = _variant(kernel="patch_embed_fwd", ldg16=16, byte_loads=1)
    store = _variant(stg16=1, vector16_loads=1)
    assert not codegen.scalar_16bit_tile_access(bias_only) and not codegen.scalar_16bit_tile_access(pixels)
    assert codegen.scalar_16bit_tile_access(tile) and codegen.scalar_16bit_tile_access(store)
    assert not codegen.scalar_16bit_tile_access(_variant(dtype="fp32", ldg16=5))


def test_wgmma_scope():
    """(b) applies to bf16/fp16 variants whose MMA tile has >= 64 rows and whose warps form warpgroups."""
    assert codegen.wants_wgmma(_variant())
    assert not codegen.wants_wgmma(_variant(dtype="fp32"))
    small = _variant()
    small["key"]["BLOCK_M"] = 32
    assert not codegen.wants_wgmma(small)
    kv = _variant(kernel="attention_bwd_kv")
    kv["key"].update(BLOCK_M=16, BLOCK_N=128)  # owns 128 key rows: its dots have 128 rows
    assert codegen.wants_wgmma(kv)
    assert not codegen.wants_wgmma(_variant(kernel="layer_norm_fwd"))


@pytest.mark.skipif(sys.platform != "linux", reason="triton's nvidia backend (ptxas, cuobjdump) ships for Linux")
def test_unaligned_stride_kernel_is_flagged():
    """A real compile: a bf16 tile read through a row stride of 72 elements (alignment unknown to triton) turns into
    scalar 16-bit loads; the same kernel with a stride of 64 does not."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.codegen", "--selftest"], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    probe = json.loads(proc.stdout.strip().splitlines()[-1])
    assert probe["errors"] == []
    assert probe["stride72"]["ldg16"] > 0 and probe["stride72"]["spec"]["not16"] == ["stride_x=72"]
    assert probe["stride64"]["ldg16"] == 0
    fails = codegen.check_invariants({"arch": 90, "errors": [], "autotune": {}, "kernels": None,
                                      "variants": [probe["stride64"], probe["stride72"]]})
    assert len(fails["a_no_scalar_16bit"]) == 1 and "stride72" in fails["a_no_scalar_16bit"][0]


# ----------------------------------------------------------------------------------------------------------------
# The gate over the real kernels
# ----------------------------------------------------------------------------------------------------------------
EXPECTED = {  # kernel -> targets where one training step launches it
    "attention_fwd": {"b16", "so400m", "text"}, "attention_bwd_kv": {"b16", "so400m", "text"},
    "attention_bwd_q": {"b16", "so400m", "text"}, "attention_bwd_preprocess": {"b16", "so400m", "text"},
    "layer_norm_fwd": {"b16", "so400m", "text"}, "layer_norm_bwd": {"b16", "so400m", "text"},
    "linear_fwd": {"b16", "so400m", "text"}, "linear_bwd": {"b16", "so400m", "text"},
    "patch_embed_fwd": {"b16", "so400m"}, "patch_embed_bwd_weight": {"b16", "so400m"},
    "sigmoid_loss_fwd": {"loss"}, "sigmoid_loss_grad": {"loss"},
}


def test_every_variant_compiles(report):
    assert report["errors"] == [], _fail_message(report["errors"])
    assert report["returncode"] == 0


def test_gate_covers_every_kernel_target_and_dtype(report):
    seen = collections.defaultdict(set)
    for v in report["variants"]:
        seen[v["kernel"]].add((v["target"], v["dtype"]))
    for kernel, targets in EXPECTED.items():
        for t in targets:
            assert (t, "bf16") in seen[kernel], f"{kernel} not compiled at {t} in bf16"
            if t == "so400m":
                assert (t, "fp16") in seen[kernel], f"{kernel} not compiled at {t} in fp16"
    # the MAP head's one-query attention (Nq specialised to 1) at both vision shapes
    for t in ("b16", "so400m"):
        assert any(v["kernel"] == "attention_fwd" and v["target"] == t and "Nq" in v["spec"]["one"]
                   for v in report["variants"]), f"no 1-query attention at {t}"
    # uint8 and normalised float pixels into the patch embedding, at both vision shapes
    for t in ("b16", "so400m"):
        kinds = {bool(v["key"].get("IS_UINT8")) for v in report["variants"]
                 if v["kernel"] == "patch_embed_fwd" and v["target"] == t and v["dtype"] == "bf16"}
        assert kinds == {True, False}, f"patch_embed_fwd at {t}: pixel kinds {kinds}"
    # the loss's training pass (FUSED) and the distributed ring's recomputing pass
    assert {v["key"].get("FUSED") for v in report["variants"] if v["kernel"] == "sigmoid_loss_grad"} == {True, False}
    # the text tower's padding mask
    assert any(v["kernel"] == "attention_fwd" and v["target"] == "text" and v["key"].get("HAS_MASK")
               for v in report["variants"])


def test_fp16_compiles_like_bf16(report):
    """Why fp16 is compiled at one shape only: there, each fp16 variant has the same instruction mix as its bf16
    twin (same launch choices, same MMA / copy / load widths)."""
    mix = ("hgmma", "hmma", "ldgsts128", "ldgsts_narrow", "utmaldg", "ldg16", "stg16")
    bf16 = {(v["kernel"], codegen.config_of(v)): v for v in report["variants"]
            if v["target"] == "so400m" and v["dtype"] == "bf16"}
    fp16 = {(v["kernel"], codegen.config_of(v)): v for v in report["variants"]
            if v["target"] == "so400m" and v["dtype"] == "fp16"}
    assert fp16 and set(fp16) == set(bf16)
    diff = [f"{k}: bf16 {[bf16[k][m] for m in mix]} fp16 {[fp16[k][m] for m in mix]}"
            for k in sorted(bf16) if any(bf16[k][m] != fp16[k][m] for m in mix)]
    assert not diff, _fail_message(diff)


def test_a_no_scalar_16bit_global_loads(report):
    """(a) No bf16/fp16 variant at the target shapes reads or writes global memory 16 bits at a time."""
    fails = codegen.check_invariants(report)["a_no_scalar_16bit"]
    assert not fails, _fail_message(fails)


def test_b_warpgroup_mma_for_64_row_tiles(report):
    """(b) Every bf16/fp16 variant whose MMA tiles have >= 64 rows (see codegen.mma_rows) and a multiple of 4 warps
    uses Hopper's warpgroup MMA (HGMMA), not mma.sync (HMMA)."""
    fails = codegen.check_invariants(report)["b_wgmma"]
    assert not fails, _fail_message(fails)


def test_c_each_kernel_has_a_spill_free_config_that_fits(report):
    """(c) At every target shape and dtype each kernel has at least one variant without spills (no STL/LDL) within
    the 227 KiB of shared memory per block."""
    fails = codegen.check_invariants(report)["c_spill_free_fits"]
    assert not fails, _fail_message(fails)


def test_d_no_autotune_config_that_never_launches(report):
    """(d) Every autotune config survives pruning at some target shape and fits shared memory there."""
    fails = codegen.check_invariants(report)["d_no_dead_config"]
    assert not fails, _fail_message(fails)
