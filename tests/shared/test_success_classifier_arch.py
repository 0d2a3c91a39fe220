"""A classifier arch from a weights blob is checked with the actor's own bounds, in the classifier's words."""

import pytest

from shared.policy import ArchTooLarge
from shared.success_classifier import SuccessClassifier, check_arch, shapes

GOOD = SuccessClassifier([("cam", (64, 64, 3))]).arch()


@pytest.mark.parametrize("update, error, match", [
    ({"latent": 0}, ValueError, r"classifier arch field 'latent' must be an int >= 1"),
    ({"latent": 1 << 30}, ValueError, r"classifier arch field 'latent' is 1073741824, at most 4096"),
    ({"hidden": []}, ValueError, r"classifier arch field 'hidden' must have at least one entry"),
    ({"channels": []}, ValueError, r"classifier arch field 'channels' must have at least one entry"),
    ({"hidden": [1 << 21]}, ArchTooLarge, r"classifier arch field 'hidden' has a width past"),
    ({"hidden": [8] * 65}, ValueError, r"classifier arch has 65 hidden layers, at most 64"),
    ({"channels": [2000]}, ValueError, r"classifier arch field 'channels' has values past 1024"),
    ({"channels": [True]}, ValueError, r"classifier arch field 'channels' must be a list of ints"),
    ({"images": [["cam", 64, 64, 5]]}, ValueError, r"classifier arch image 'cam' has 5 channels"),
    ({"images": [["cam", 8, 8, 3]]}, ValueError, r"classifier arch image 'cam' of 8x8 is too small"),
    ({"channels": [1024] * 8, "images": [[f"c{i}", 512, 512, 3] for i in range(8)]}, ArchTooLarge,
     r"multiply-adds per frame"),
])
def test_bad_classifier_arch_is_refused_before_anything_is_built(update, error, match):
    with pytest.raises(error, match=match):
        check_arch({**GOOD, **update})
    with pytest.raises(error, match=match):
        shapes({**GOOD, **update})  # the robot's path: sizes come from the checked arch only


def test_good_classifier_arch_round_trips():
    assert check_arch(GOOD) == [("cam", (64, 64, 3))]
    assert shapes(GOOD) == {k: tuple(v.shape) for k, v in SuccessClassifier([("cam", (64, 64, 3))]).state_dict().items()}
