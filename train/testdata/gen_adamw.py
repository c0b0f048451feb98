# Writes adamw_torch.json: torch.optim.AdamW (single-tensor, CPU, float32)
# and torch.nn.utils.clip_grad_norm_ on two tensors over 5 steps, the oracle
# of train's TestAdamWMatchesTorch. Run with: /usr/bin/python3 gen_adamw.py
import json
import torch

torch.manual_seed(0)
shapes = [(7, 5), (13,)]
params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
p0 = [p.detach().clone() for p in params]
cfgs = dict(lr=3e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
opt = torch.optim.AdamW(params, foreach=False, **cfgs)
steps = []
for step in range(5):
    grads = [torch.randn(s) * (10.0 if step % 2 == 0 else 0.1) for s in shapes]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
    steps.append(dict(grads=[g.flatten().tolist() for g in grads], norm=float(norm),
                      clipped=[p.grad.flatten().tolist() for p in params]))
    opt.step()
out = dict(generator="train/testdata/gen_adamw.py, torch " + torch.__version__,
           config=dict(lr=cfgs["lr"], beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05, max_norm=1.0),
           p0=[p.flatten().tolist() for p in p0], steps=steps,
           final=[p.detach().flatten().tolist() for p in params],
           exp_avg=[opt.state[p]["exp_avg"].flatten().tolist() for p in params],
           exp_avg_sq=[opt.state[p]["exp_avg_sq"].flatten().tolist() for p in params])
json.dump(out, open("adamw_torch.json", "w"))
