"""Cloud side: learner, replay buffer, services."""
