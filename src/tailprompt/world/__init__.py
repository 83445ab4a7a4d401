"""The embedded world: a seeded procedural vision-language sandbox rendered on the fly (design §6).

- `render`: scenes (shape, colour, size, texture, background + nuisance jitter) and their pixels per style
  (clean, noisy, blurred, sketch: a style plays the role of a domain);
- `vocab`: label vocabularies over attribute combinations ("red circle", "striped square", "large blue
  triangle") with a checkerboard base/new split, and the colour+shape pairs held out of pretraining;
- `captions`: varied English captions of scenes (templates, synonyms, attribute dropping) and the word list;
- `datasets`: `world_<vocab>_<style>` datasets, registered in `tailprompt.data`'s registry on import;
- `pretrain`: contrastive pretraining of the embedded CLIP on captioned scenes (imported on demand).

Why this shape: class names carry real semantic structure (classes sharing a colour or a shape are
related), base-to-new splits are held-out attribute combinations, and styles give domain shift, so the
papers' protocols run unchanged on a CPU with no downloads. The world sits above `tailprompt.data`: the data
layer never imports it; importing this package registers its datasets.
"""

from tailprompt.world import datasets  # noqa: F401  (registers the world datasets)
