import torch

from aesampler.evaluation import evaluate_samples, format_table

generator = torch.Generator().manual_seed(0)
samples = torch.rand(200, 1, 8, 8, generator=generator)  # (N, C, H, W), values in [0, 1]
held_out = torch.rand(300, 1, 8, 8, generator=generator)  # real images not used in training
report = evaluate_samples(samples, held_out, bootstrap=50, log=lambda line: None)
print(format_table(report))
print(report["skipped"])  # {'mmd_learned': 'needs latents and reference_latents', ...}
