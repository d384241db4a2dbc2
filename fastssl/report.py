"""The end-of-run summary printed to the terminal."""
from __future__ import annotations


def print_summary(summary) -> None:
    init = {s.label: s.accuracy for s in summary.knn_init}
    print()
    print(f"fastssl: {summary.steps} steps, {summary.images_per_second:.1f} images/s")
    print(f"{'kNN top-1 (test split)':<28}{'random init':>12}{'trained':>10}")
    for s in summary.knn_final:
        before = f"{100 * init[s.label]:.2f}%" if s.label in init else "-"
        print(f"{f'k={s.k}, T={s.temperature:g}':<28}{before:>12}{f'{100 * s.accuracy:.2f}%':>10}")
    if summary.encoder_path is not None:
        print(f"encoder weights (timm state_dict): {summary.encoder_path}")
