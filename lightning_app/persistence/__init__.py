"""Plain files, manifests and stores: no Lightning Trainer in here, so it is testable without training."""
