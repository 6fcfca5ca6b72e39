"""Backend kernel modules: each exposes softmax_forward(x, out, log) and softmax_backward(y, grad, out, log)."""
