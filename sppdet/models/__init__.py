"""What is learned and applied: trunks, features, proposals, head, SVMs, box regressors, the detector."""
