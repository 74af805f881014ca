"""Cal-QL + EDIS: ``recipes/calql.py`` with the EDIS config group of ``configs/edis_calql.yaml`` turned on.

Liu et al., "Energy-Guided Diffusion Sampling for Offline-to-Online Reinforcement Learning" (EDIS), ICML 2024, on
Cal-QL (Nakamoto et al., NeurIPS 2023):

    pre-train Cal-QL on the dataset (as recipes/calql.py)
    switch: calibration off, cql_alpha <- cql_alpha_online; fit the transition diffusion model on the dataset
    fine-tune: one env step, then one update on a batch of synthetic_fraction EDIS samples + real online data
               (the offline data is not replayed directly: online.mixing_ratio 0)
    every online.retrain_every env steps: retrain the diffusion model on offline + online data, the energies on the
               online data with the current policy, and regenerate the synthetic pool with energy guidance

    python recipes/edis_calql.py                                             # pendulum, a few minutes on CPU
    python recipes/edis_calql.py edis.synthetic_fraction=0.3 edis.guidance.state=2.0
    python recipes/edis_calql.py config=mujoco_hopper_medium                 # the paper's settings (GPU)
    python recipes/edis_calql.py resume=runs/edis_calql/<run>                # continue a run, in either phase
"""

from calql import main  # the recipe's own directory is on sys.path when it runs as a script

from diffrl.train import run_recipe

if __name__ == "__main__":
    run_recipe(main, recipe=__file__)
