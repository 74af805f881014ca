"""IQL + EDIS: ``recipes/iql.py`` with the EDIS config group of ``configs/edis_iql.yaml`` turned on.

Liu et al., "Energy-Guided Diffusion Sampling for Offline-to-Online Reinforcement Learning" (EDIS), ICML 2024, on IQL
(Kostrikov et al., ICLR 2022) with CORL's fine-tuning protocol and TorchRL's ``IQLLoss``:

    pre-train IQL on the dataset (as recipes/iql.py)
    switch: fit the transition diffusion model on the dataset
    fine-tune: one env step, then one update on a batch drawn uniformly from dataset + online data (CORL's IQL) whose
               edis.synthetic_fraction rows are replaced by EDIS samples (the official code instead makes 20 extra
               updates on synthetic data per retrain: online.extra_updates=20 edis.synthetic_fraction=0)
    every online.retrain_every env steps: retrain the diffusion model on offline + online data, the energies on the
               online data with the current policy, and regenerate the synthetic pool with energy guidance

    python recipes/edis_iql.py                                             # pendulum, a few minutes on CPU
    python recipes/edis_iql.py config=mujoco_hopper_medium_replay          # the paper's settings (GPU)
    python recipes/edis_iql.py resume=runs/edis_iql/<run>                  # continue a run, in either phase
"""

from iql import main  # the recipe's own directory is on sys.path when it runs as a script

from diffrl.train import run_recipe

if __name__ == "__main__":
    run_recipe(main, recipe=__file__)
