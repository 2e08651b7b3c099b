"""What a checkpoint looks at: Grad-CAM / attention rollout, error grids and feature maps (``histo-bench explain``)."""
