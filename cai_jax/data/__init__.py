"""Data: prompt sets, SL-CAI and feedback generation, training pipelines."""
