"""bench/attention.py runs end to end in smoke mode (tiny ViT, CPU) and writes finite numbers.

Providers packed, padded, separate and one forced backend (sdpa_tiles) only: torch.compile of the
tiny ViT costs minutes on this shared CPU, and flex has no CPU backward; the benchmark itself also
runs the compile providers and the backend sweep (``python bench/attention.py --smoke``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from _bench_smoke import ROOT, positive_timing

PROVIDERS = ("packed", "padded", "separate", "packed:sdpa_tiles")
CASES = ("mmoco-8", "multicrop", "mae", "dac")  # mmoco-4/16 and moco-full take the same code paths


def run_smoke(out_dir, providers, cases):
    """``_bench_smoke.run_smoke`` with a ``--cases`` subset (the full list takes minutes on 2 shared cores)."""
    env = {**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "1")}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "attention.py"), "--smoke", "--providers", ",".join(providers),
                           "--cases", ",".join(cases), "--out-dir", str(out_dir)],
                          check=True, cwd=ROOT, env=env, timeout=600, capture_output=True, text=True)
    jsons = list(out_dir.glob("attention-*-smoke.json"))
    assert len(jsons) == 1 and jsons[0].with_suffix(".png").is_file()
    doc = json.loads(jsons[0].read_text())
    assert doc["smoke"] is True
    for r in doc["records"]:
        assert r["error"] is None, r
    return doc, proc.stdout


def test_attention_bench_smoke(tmp_path):
    doc, stdout = run_smoke(tmp_path, PROVIDERS, CASES)
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
