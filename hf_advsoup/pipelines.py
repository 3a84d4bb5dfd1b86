"""An image-classification pipeline that prepares images exactly as training and evaluation do.

transformers' ``ImageClassificationPipeline`` flattens every PIL image (and every image file it opens) with
``image.convert("RGB")`` before its image processor runs (``transformers.image_utils.load_image``): the alpha channel
is dropped, and transparent pixels take whatever colour they happen to store (often black). hf_advsoup's training and
evaluation transforms composite transparency on white (:func:`hf_advsoup.data.to_rgb`), and so does the saved image
processor (``do_convert_rgb=True``). :class:`AdvSoupImageClassificationPipeline` opens images the same way, so a
transparent PNG gets the prediction it gets in evaluation.

Example:

```python
from hf_advsoup.pipelines import soup_pipeline

classifier = soup_pipeline("runs/fashion-mnist", beta=0.5)        # or beta="auto" for a model with a selector
classifier("logo.png", top_k=3)
```
"""

from __future__ import annotations

import os
from typing import Any

import PIL.Image
import PIL.ImageOps
from transformers import ImageClassificationPipeline, pipeline

from .data.images import to_rgb

__all__ = ["AdvSoupImageClassificationPipeline", "soup_pipeline"]


class AdvSoupImageClassificationPipeline(ImageClassificationPipeline):
    """:class:`~transformers.ImageClassificationPipeline` whose images are converted to RGB like hf_advsoup's
    training data: PIL images and local image files keep their transparency until it is composited on white
    (16-bit, float and palette images are converted as :func:`~hf_advsoup.data.to_rgb` documents). URLs and base64
    strings are loaded by transformers (as the stock pipeline does). Use it with
    ``pipeline("image-classification", model=..., pipeline_class=AdvSoupImageClassificationPipeline)`` or
    :func:`soup_pipeline`."""

    def preprocess(self, image: Any, timeout: float | None = None):
        if isinstance(image, (str, os.PathLike)) and os.path.isfile(image):
            image = PIL.Image.open(image)
        if isinstance(image, PIL.Image.Image):
            image = to_rgb(PIL.ImageOps.exif_transpose(image))
        return super().preprocess(image, timeout=timeout)


def soup_pipeline(model: str | Any, beta: float | str | None = None, **kwargs) -> AdvSoupImageClassificationPipeline:
    """``transformers.pipeline("image-classification", ...)`` with :class:`AdvSoupImageClassificationPipeline`.

    Args:
        model: A path or Hub id of a model of this library (or a loaded model, with ``image_processor=`` given).
        beta: The soup to predict with (``config.beta`` when None): a float, or ``"auto"`` for a model that has a
            selector. Passed to ``from_pretrained`` as ``model_kwargs={"beta": beta}``.
        kwargs: Anything ``transformers.pipeline`` takes (``device``, ``dtype``, ``trust_remote_code``, ...).
    """
    if beta is not None:
        kwargs["model_kwargs"] = {**kwargs.get("model_kwargs", {}), "beta": beta}
    return pipeline("image-classification", model=model, pipeline_class=AdvSoupImageClassificationPipeline, **kwargs)
