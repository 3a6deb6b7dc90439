"""Training: the recipe (config -> Trainer -> best adapter) and the Trainer subclass it runs."""
