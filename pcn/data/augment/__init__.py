"""Augmentation: timm's recipe per image (PIL) and batched (torch and OpenCV kernels)."""
