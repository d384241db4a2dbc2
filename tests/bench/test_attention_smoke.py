"""bench/attention.py runs end to end in smoke mode (tiny ViT, CPU) and writes finite numbers.

Providers packed, padded and separate only: torch.compile of the tiny ViT costs minutes on this
shared CPU; the benchmark itself also runs "compile" (``python bench/attention.py --smoke``).
"""
from __future__ import annotations

from _bench_smoke import positive_timing, run_smoke

PROVIDERS = ("packed", "padded", "separate")


def test_attention_bench_smoke(tmp_path):
    doc, stdout = run_smoke("attention", tmp_path, PROVIDERS)
    assert doc["meta"]["attn_backend"] == "sdpa_cpu"  # the CPU default: dense runs, the mask only for many runs
    seen = set()
    for r in doc["records"]:
        seen.add((r["case"]["case"], r["provider"]))
        for t in (r["fwd"], r["total"]):
            assert positive_timing(t)
        assert r["case"]["tokens"] > 0 and r["extra"]["padded_tokens"] >= r["case"]["tokens"]
    cases = ("mmoco-chunks", "moco-full", "multicrop", "dac")
    assert seen == {(c, p) for c in cases for p in PROVIDERS}
    # the token counts are the ones the cases promise (tiny ViT: 64 patches, local crops 3×3, DAC 16+16)
    tokens = {r["case"]["case"]: r["case"]["tokens"] for r in doc["records"]}
    assert tokens == {"mmoco-chunks": 2 * 8 * 9, "moco-full": 2 * 65, "multicrop": 2 * (2 * 65 + 6 * 10), "dac": 2 * (17 + 17)}
    assert "vs separate" in stdout
