"""Triton kernels of the scoring ops, one op per module. Imported only when Triton is
installed; they run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (how CI
tests them). The pure-PyTorch `fastis.ops.reference` computes the same quantities the same way."""
