"""The augmentation constants every implementation of the recipe shares (the PIL/torch
transforms, the FFCV operations, the memory loader's batched crops): a leaf module, so
the implementations import it and not each other."""

RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # aspect-ratio range of random-resized-crop (torchvision/timm/FFCV default)
BLUR_SIGMA = (0.1, 2.0)  # 3-Augment's Gaussian blur radius range (DeiT III, timm 'GaussianBlurRand')
SOLARIZE_THRESHOLD = 128  # 3-Augment's solarize threshold (PIL ImageOps.solarize default)
