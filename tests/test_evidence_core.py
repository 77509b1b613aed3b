"""Evidence for the core's reference attacks on the CIFAR-10 subset (the `cpu` table).

A smooth class-wise pattern is a shortcut the victim learns instead of the images; uniform
random noise in the same L∞ ball is not. Measured (seed 0, the committed `cpu` table, whose
cells the ``evidence`` fixture recomputes, or in CI reads from a copy of results/): clean 74.2 %, class-wise noise 57.8 %, random
noise 73.8 %.
"""
import pytest


@pytest.mark.slow
def test_classwise_noise_works_and_random_noise_does_not(evidence):
    acc = evidence(["classwise-noise", "random-noise"], ["none"])
    clean = acc[("clean", "none")]
    assert acc[("classwise-noise", "none")] <= clean - 0.10, acc
    assert abs(acc[("random-noise", "none")] - clean) <= 0.05, acc
