"""How every network looks at an image at inference: several scales (and mirrors), summed back at
the image's size. Map export and segmenter inference share it."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from wsss.dataset.images import to_tensor, upsample
from wsss.training.runtime import place


def sum_over_views(forward, image: np.ndarray, scales, flip: bool, device: torch.device) -> torch.Tensor:
    """forward(batch) -> B x C x h x w run on the image at each scale (and its mirror when flip),
    each output resized back to the image and summed: C x H x W. Map export and segmenter inference
    share it, so both look at an image the same way."""
    h, w = image.shape[:2]
    total = 0
    for scale in scales:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        x = place(to_tensor(np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)))[None], device)
        out = forward(torch.cat([x, x.flip(-1)]) if flip else x).float()  # sums stay float32 under bf16
        if flip:
            out = out[:1] + out[1:].flip(-1)
        total = total + upsample(out, (h, w))[0]
    return total
