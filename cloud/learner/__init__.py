"""Learning core (SAC) and the learner service."""
