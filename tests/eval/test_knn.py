"""Weighted kNN against a brute-force loop, and on data with a known answer."""
import math

import torch

from fastssl.eval.knn import knn_accuracy, knn_predict


def loop_knn(bank, bank_y, queries, k, t, num_classes):
    """Plain reference: cosine similarity to every bank item, k largest, exp(sim/T)-weighted vote."""
    preds = []
    for q in queries.double():
        sims = []
        for f, y in zip(bank.double(), bank_y.tolist()):
            sims.append((float(q @ f / (q.norm() * f.norm())), y))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for s, y in sims[:k]:
            votes[y] += math.exp(s / t)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


def test_matches_loop_reference_on_random_data():
    bank, bank_y = torch.randn(57, 9), torch.randint(0, 4, (57,))
    queries = torch.randn(13, 9)
    for k, t in [(1, 0.1), (7, 0.07), (200, 0.5)]:
        got = knn_predict(bank, bank_y, queries, k=k, temperature=t, num_classes=4, chunk=5)
        assert torch.equal(got, loop_knn(bank, bank_y, queries, min(k, 57), t, 4))


def test_known_answer_on_separated_clusters():
    """Three well-separated clusters: every query is classified by its cluster (accuracy exactly 1),
    and with labels shuffled independently of the features accuracy drops to chance."""
    centers = torch.eye(3, 16) * 10
    y_bank = torch.arange(3).repeat_interleave(40)
    bank = centers[y_bank] + torch.randn(120, 16)
    y_test = torch.arange(3).repeat_interleave(20)
    test = centers[y_test] + torch.randn(60, 16)
    assert knn_accuracy(bank, y_bank, test, y_test, k=20, temperature=0.07, num_classes=3) == 1.0
    # Labels independent of the features: 10 clusters whose bank labels are drawn at random. Each query's
    # 10 neighbours carry random labels, so accuracy sits near chance (0.1); 0.4 leaves a wide margin.
    # (With 3 clusters and k = the whole bank every query of a cluster votes alike, and all three
    # clusters come out right by luck a few percent of the time: the old form of this check was flaky.)
    centers = torch.eye(10, 16) * 10
    y_bank = torch.arange(10).repeat_interleave(40)
    bank = centers[y_bank] + torch.randn(400, 16)
    y_test = torch.arange(10).repeat_interleave(20)
    test = centers[y_test] + torch.randn(200, 16)
    random_labels = torch.randint(0, 10, (400,))
    assert knn_accuracy(bank, random_labels, test, y_test, k=10, temperature=0.07, num_classes=10) < 0.4
