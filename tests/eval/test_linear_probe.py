"""The linear probe reaches the optimum of its objective (checked with a hand-written gradient) and
classifies what a linear map can separate."""
import torch

from fastssl.eval.linear_probe import fit_linear_probe, linear_probe_accuracy


def test_fit_satisfies_the_optimality_condition():
    """∇ of mean CE + λ/2‖W‖² on standardised features, written out: Xᵀ(softmax(XW+b) − Y)/N + λW and
    the column sums of (softmax − Y)/N, must vanish at the returned W, b."""
    n, e, c, lam = 301, 13, 5, 1e-2
    x = torch.randn(n, e) * torch.rand(e) * 3 + torch.randn(e)
    y = torch.randint(0, c, (n,))
    w, b, mean, std = fit_linear_probe(x, y, num_classes=c, weight_decay=lam)
    xs = (x.double() - x.double().mean(0)) / x.double().std(0)
    torch.testing.assert_close(mean, x.double().mean(0))
    logits = xs @ w + b
    p = torch.exp(logits - logits.max(1, keepdim=True).values)
    p = p / p.sum(1, keepdim=True)
    onehot = torch.zeros(n, c, dtype=torch.float64)
    onehot[torch.arange(n), y] = 1
    grad_w = xs.t() @ (p - onehot) / n + lam * w
    grad_b = (p - onehot).sum(0) / n
    assert grad_w.abs().max() < 1e-5 and grad_b.abs().max() < 1e-5


def test_separable_classes_are_classified():
    c, e = 4, 9
    centres = torch.randn(c, e) * 6
    y_tr, y_te = torch.randint(0, c, (500,)), torch.randint(0, c, (123,))
    x_tr, x_te = centres[y_tr] + torch.randn(500, e), centres[y_te] + torch.randn(123, e)
    assert linear_probe_accuracy(x_tr, y_tr, x_te, y_te, num_classes=c) > 0.97
    # labels unrelated to the features: chance level on held-out data
    acc = linear_probe_accuracy(x_tr, torch.randint(0, c, (500,)), x_te, torch.randint(0, c, (123,)), num_classes=c)
    assert acc < 0.5
