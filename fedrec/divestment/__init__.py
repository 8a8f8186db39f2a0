"""Divest regions from a line trained across jurisdictions: exact or fast, with the evidence of removal.

`run` rebuilds the line without the regions (`divest`); `evidence` measures what only those regions could have
taught the model, before and after.
"""

from fedrec.divestment.run import METHODS, Divestment, divest, divest_lines, line_head

__all__ = ["METHODS", "Divestment", "divest", "divest_lines", "line_head"]
