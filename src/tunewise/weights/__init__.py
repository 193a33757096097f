"""Learned indicator weights (paper D): the tiny validation set, the in-context proxy, the search and its check."""

# d, the demonstrations per proxy draw: one default and one help for every command that searches
# weights (`tune-weights --demos`, `plan --dev --demos`), so an error's fix names a flag both have.
DEFAULT_DEMOS = 8
DEMOS_HELP = ("d: demonstrations per draw, one from each of d rank strata of S(w) (with the shared prefix cache, "
              "more demonstrations cost little: the anchors' own tokens dominate; fewer fit a short context).")
