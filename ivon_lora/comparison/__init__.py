"""Seeded comparisons of training recipes and the statistics of the studies.

`stats` holds what every study shares (a metric's mean, standard deviation and interval over seeds, the paired
bootstrap of a difference, the selection and reported seed sets, table rendering); `ivon-lora compare` and the
scripts under scripts/ import it.
"""
