"""bench/attention.py runs end to end in smoke mode (tiny ViT, CPU) and writes finite numbers.

Providers packed, padded, separate and one forced backend (sdpa_tiles) only: torch.compile of the
tiny ViT costs minutes on this shared CPU, and flex has no CPU backward; the benchmark itself also
runs the compile providers and the backend sweep (``python bench/attention.py --smoke``).
"""
from __future__ import annotations

from _bench_smoke import positive_timing, run_smoke

PROVIDERS = ("packed", "padded", "separate", "packed:sdpa_tiles")
CASES = ("mmoco-8", "multicrop", "mae", "dac")  # mmoco-4/16 and moco-full take the same code paths


def test_attention_bench_smoke(tmp_path):
    # a --cases subset: the full list takes minutes on 2 shared cores
    doc, stdout = run_smoke("attention", tmp_path, PROVIDERS, "--cases", ",".join(CASES), timeout=600)
    seen = set()
    for r in doc["records"]:
        seen.add((r["case"]["case"], r["provider"]))
        for t in (r["fwd"], r["total"]):
            assert positive_timing(t)
        assert r["case"]["tokens"] > 0 and r["extra"]["padded_tokens"] >= r["case"]["tokens"]
        want = {"packed": "sdpa_cpu", "separate": "auto", "padded": "timm-sdpa", "packed:sdpa_tiles": "sdpa_tiles"}
        assert r["extra"]["backend"] == want[r["provider"]]
    assert seen == {(c, p) for c in CASES for p in PROVIDERS}
    # the token counts the cases promise (tiny ViT: 64 patches, local crops 3×3, DAC 16+16, batch 2)
    tokens = {r["case"]["case"]: r["case"]["tokens"] for r in doc["records"]}
    assert tokens == {"mmoco-8": 2 * 8 * 9, "multicrop": 2 * (2 * 65 + 6 * 10), "mae": 2 * 17, "dac": 2 * (17 + 17)}
    assert "vs sep" in stdout and "targets:" in stdout and "rule: picked" in stdout
