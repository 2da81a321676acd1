"""DALI's training stages as Trainer subclasses, and their objectives."""
