"""TensorDict modules: the diffusion actor, Q-selection, the Gaussian actors (``tanh_normal``, CORL's IQL ``gaussian``),
critics and value networks."""
