"""Evaluations: multiple-choice scoring and the HHH comparisons."""
