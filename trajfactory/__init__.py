"""trajfactory: repositories and tutorials in, verified agent trajectories out."""

__version__ = "0.1.0"
