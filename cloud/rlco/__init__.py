"""RL-Co: sim-real co-training in two stages (Stage I co-trained SFT, Stage II real-regularised RL in sim).

``cloud-learner rlco --config rlco.toml`` runs the recipe (docs/rlco.md). One idea per module:
``losses`` (SFT, alpha and beta weighting), ``gae`` and ``ppo`` (on-policy RL over vectorised sim
envs), ``sac_rl`` (the off-policy alternative), ``vecenv`` (N Fetch envs stepped together),
``datasets`` (versioned demonstration files), ``evaluate`` (success on the real twin), ``stages``
(the resumable stage machine) and ``cli``.
"""
