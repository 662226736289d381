"""A saved model applied to scans: ``brainfl predict`` and Grad-CAM heat maps."""
