"""TorchRL LossModules (Diffusion-QL, Q-Score Matching, Cal-QL, diffusion BC) on one base, ``common.DiffrlLossBase``;
TorchRL's own losses registered; target updaters."""
