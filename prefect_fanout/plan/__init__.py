"""Plans of dependent agent tasks: model, validation (every problem at once), graph algorithms."""
