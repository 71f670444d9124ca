import torch, numpy as np
from mergekit.sparsify import magnitude
torch.manual_seed(0)
n = 4_000_000
a = (torch.randn(n) * 0.02).to(torch.bfloat16); b = (torch.randn(n) * 0.02).to(torch.bfloat16)
d = b - a
mk = (a + magnitude(d, 0.5)).float().numpy()
np.save("/tmp/mk_a.npy", a.float().numpy()); np.save("/tmp/mk_b.npy", b.float().numpy()); np.save("/tmp/mk_out.npy", mk)
