"""Outputs: submissions and atomic, non-clobbering file writes."""
