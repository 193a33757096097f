"""Learned indicator weights (paper D): the tiny validation set, the in-context proxy, the search and its check."""
