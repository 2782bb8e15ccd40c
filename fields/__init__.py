"""Hash-grid encodings, MLPs and neural fields."""
