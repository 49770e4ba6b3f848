"""Torch-side primitives that know nothing of a config: timm models (``models``), weights files (``weights``) and
the input path, one module per job: ``host`` (per-image CPU steps), ``kernels`` (batched device augmentation),
``policies`` (TrivialAugment, RandAugment, the named policies), ``device`` (the device half of the input path and its
registry of steps) and ``views`` (test-time views). The config's validators import them lazily, only when a
command trains.

Augmentation and test-time views.

Two places augment a training image, and a config may use either or both:

- ``train.augment``: albumentations transforms, per image on the CPU, written in YAML as
  ``- Affine: {rotate: [-10, 10], p: 0.5}``. They run after the resize to the model's
  input size (:class:`HostTransform`), on uint8 pixels.
- ``train.device_augment``: the same kind of steps, but on whole batches on the training
  device (:class:`DeviceTransform`), each image with its own random parameters. Where
  albumentations costs a fraction of a millisecond per image in Python (its ``Affine``
  is about 0.3 ms at 32-74 px on the development CPU), a batched affine warp is one
  ``grid_sample`` per batch. The registry :data:`DEVICE_AUGMENTS` names the steps; their
  parameters follow albumentations' names so a step moves between the two lists unchanged.

The loader carries uint8 pixels (four times less to copy to a GPU); the device turns
them into floats, augments, and applies the model's normalisation.

Test-time views act on whole normalised batches on the device, so every view of a
batch goes through the model in one forward pass (one pass per output shape: see
:func:`view_groups`). Views are named strings: ``identity``, ``hflip``, ``vflip``,
``transpose``, ``shift(dx,dy)`` (pixels), ``zoom(s)`` (same size, centre crop or pad) and
``resize(s)`` (the whole image at ``s`` times the side: FixRes, Touvron et al. 2019).
Flips are not always safe (digits and text are not flip-invariant): choose the views per
competition.

"""
