"""The protocol that made a report's corrupted images travels with it: only a published protocol
(ImageNet-C's own pipeline, or its released images) over all 15 corruptions against AlexNet may stand
beside published ImageNet-C figures."""

from hf_robust_distill.evaluation import RobustnessReport


def test_only_a_published_protocol_over_all_15_corruptions_against_alexnet_is_comparable_with_published_figures():
    from hf_robust_distill.metrics.corruption_robustness.corruption_robustness import IMAGENET_C_CORRUPTIONS

    grid = {c: {s: 0.5 for s in range(1, 6)} for c in IMAGENET_C_CORRUPTIONS}
    report = RobustnessReport("m", "imagenet-1k", 10, (224, 224), 0.8, grid, {c: "torch" for c in grid},
                              baseline={"name": "AlexNet"})
    assert report.mce_is_complete and report.protocol == "model-resolution"
    assert not report.comparable_with_published  # made at the model's resolution, without the JPEG step
    assert RobustnessReport.from_dict({**report.to_dict(), "protocol": "released"}).comparable_with_published
