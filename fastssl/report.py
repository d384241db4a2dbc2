"""The end-of-run summary printed to the terminal."""
from __future__ import annotations


def print_summary(summary) -> None:
    init = {s.label: s.accuracy for s in summary.eval_init}
    print()
    print(f"fastssl: {summary.steps} steps, {summary.images_per_second:.1f} images/s")
    print(f"{'top-1 (test split)':<28}{'random init':>12}{'trained':>10}")
    for s in summary.eval_final:
        before = f"{100 * init[s.label]:.2f}%" if s.label in init else "-"
        name = f"kNN k={s.k}, T={s.temperature:g}" if hasattr(s, "k") else "linear probe"
        print(f"{name:<28}{before:>12}{f'{100 * s.accuracy:.2f}%':>10}")
    if summary.encoder_path is not None:
        print(f"encoder weights (timm state_dict): {summary.encoder_path}")


def plot_curves(metrics_jsonl, out_png) -> None:
    """Loss, learning rate, kNN accuracy and, when logged, the ``kappa_*`` monitors against the step,
    from ``metrics.jsonl``, as one PNG."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in open(metrics_jsonl) if line.strip()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    kappa_keys = sorted({k for r in train for k in r if k.startswith("kappa_")})
    fig, axes = plt.subplots(1, 4 if kappa_keys else 3, figsize=(20 if kappa_keys else 15, 4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train])
    axes[0].set_title("training loss")
    axes[1].plot([r["step"] for r in train], [r["lr"] for r in train])
    axes[1].set_title("learning rate")
    for key in sorted({k for r in evals for k in r if k.startswith(("knn_", "linear_"))}):
        pts = [(r["step"], 100 * r[key]) for r in evals if key in r]
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
    axes[2].set_title("kNN / linear-probe top-1 (%)")
    if evals:
        axes[2].legend(fontsize=8)
    if kappa_keys:  # Masked MoCo / BYOL: vMF concentration of each image's chunk representations
        for key in kappa_keys:
            pts = [(r["step"], r[key]) for r in train if key in r]
            axes[3].plot([p[0] for p in pts], [p[1] for p in pts], label=key.removeprefix("kappa_"))
        axes[3].set_yscale("log")
        axes[3].set_title("κ (vMF concentration of chunks)")
        axes[3].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
