"""Seeded comparisons of training recipes (`ivon-lora compare`) and the statistics every study shares.

One module per step, in the order data flows: `plan` (recipes, grids, seeds and budgets resolved and checked before
any model loads), `protocol` (the choice on the selection seeds and split, the reported seeds, the reported split
last; resumable), `scoring` (each row's per-example predictions from the evaluator's files, the paired differences),
`report` (compare.json, compare.md, compare.png). `stats` holds what every study shares (a metric's mean, standard
deviation and interval over seeds, the paired bootstrap of a difference, the selection and reported seed sets, table
cells); the scripts under scripts/ import it. `ivon_lora.commands.compare.run_compare` drives them with `train`'s and
`eval`'s library functions (this package imports neither command).
"""
