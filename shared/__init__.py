"""Code shared by robots and the cloud learner."""
