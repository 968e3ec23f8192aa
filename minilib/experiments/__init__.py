"""What the chapters measure: each chapter's runs, the artefacts' recipes (``zoo``) and the headline comparisons.

The techniques in ``minilib`` never import from here; experiments import the techniques.
"""
