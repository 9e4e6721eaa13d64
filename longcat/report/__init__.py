"""What the workflow tells people about a run: the pre-launch estimate and the report's figures and tables."""
