"""The objectives' docstring examples run as doctests, so the documented calls and numbers cannot drift."""

import doctest

import pytest

from dali_hf.trainers.objectives import attentive_ot, contrastive, mmd, optimal_transport


@pytest.mark.parametrize("module", [mmd, optimal_transport, attentive_ot, contrastive], ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    results = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0, f"{module.__name__} has no examples"
    assert results.failed == 0, f"{results.failed} docstring example(s) of {module.__name__} failed (output above)"
