"""ties_merge's sign election: "total" and "frequency" against PEFT's merge_utils, and the frequency tie-break."""

import pytest
import torch

from lorakit.combine import ties_merge


@pytest.mark.parametrize("method", ["total", "frequency"])
def test_ties_merge_matches_peft(method: str) -> None:
    from peft.utils.merge_utils import calculate_majority_sign_mask, disjoint_merge

    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(6, 5, generator=g) * s for s in (1.0, 0.2, 0.3)]  # odd count: no count ties
    stacked = torch.stack(tensors)
    expected = disjoint_merge(stacked, calculate_majority_sign_mask(stacked, method))
    torch.testing.assert_close(ties_merge(tensors, method), expected)
    other = "frequency" if method == "total" else "total"
    assert not torch.allclose(ties_merge(tensors, other), expected)  # the two elections do differ here


def test_frequency_tie_is_broken_by_mass() -> None:
    tensors = [torch.tensor([3.0, -3.0]), torch.tensor([-1.0, 1.0])]  # one vote each way per entry
    torch.testing.assert_close(ties_merge(tensors, "frequency"), torch.tensor([3.0, -3.0]))
