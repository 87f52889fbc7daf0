"""Bottom layer: safe file writes shared by every other layer."""
