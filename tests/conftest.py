import torch

# The test models are tiny: one thread avoids oversubscribing small CI machines, where
# per-op thread hand-offs cost more than the arithmetic.
torch.set_num_threads(1)
