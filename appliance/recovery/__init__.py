"""Recovery of work Redis lost: the reconciler."""
