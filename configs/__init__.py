"""Built-in architecture entries (models/) and search configs (search/), shipped inside the wheel."""
