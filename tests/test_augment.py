"""Batched augmentation: shapes, value range, ten-crop geometry, identity at p=0, randomness at p=1."""

from __future__ import annotations

import torch

from fer_tune.training.augment import (
    AugmentConfig,
    BatchAugmenter,
    center_crop,
    random_affine,
    random_erasing,
    ten_crop,
)

OFF = dict(p_rescale=0, p_shift=0, p_rotate=0, p_flip=0, p_erase=0)


def _images(n=6, seed=0):
    return torch.randint(0, 256, (n, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_vgg_recipe_shapes_and_range():
    aug = BatchAugmenter(AugmentConfig("vgg"), torch.Generator().manual_seed(0))
    x, y = aug.train(_images(), torch.arange(6))
    assert x.shape == (60, 1, 40, 40) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert y.tolist() == [i for i in range(6) for _ in range(10)]
    assert aug.eval_views(_images()).shape == (6, 10, 1, 40, 40)
    assert aug.eval_views(_images(), "single").shape == (6, 1, 1, 40, 40)


def test_ten_crop_geometry():
    x = torch.arange(48 * 48, dtype=torch.float32).view(1, 1, 48, 48)
    crops = ten_crop(x, 40)[0, :, 0]
    assert torch.equal(crops[0], x[0, 0, :40, :40])  # top-left
    assert torch.equal(crops[1], x[0, 0, :40, 8:])  # top-right
    assert torch.equal(crops[2], x[0, 0, 8:, :40])  # bottom-left
    assert torch.equal(crops[3], x[0, 0, 8:, 8:])  # bottom-right
    assert torch.equal(crops[4], x[0, 0, 4:44, 4:44])  # centre
    for k in range(5):
        assert torch.equal(crops[5 + k], ten_crop(x.flip(-1), 40)[0, k, 0])  # mirrored versions
    assert torch.equal(center_crop(x, 40)[0, 0], crops[4])


def test_zero_probabilities_give_the_identity():
    images = _images()
    aug = BatchAugmenter(AugmentConfig("vgg", **OFF), torch.Generator().manual_seed(0))
    x, _ = aug.train(images, torch.arange(6))
    expected = ten_crop(images.unsqueeze(1).float() / 255, 40).flatten(0, 1)
    assert torch.equal(x, expected)


def test_full_probabilities_change_every_image():
    images = _images()
    g = torch.Generator().manual_seed(0)
    cfg = AugmentConfig("vgg", p_rescale=1, p_shift=1, p_rotate=1, p_flip=0, p_erase=1)
    x = images.unsqueeze(1).float() / 255
    moved = random_affine(x, cfg, g)
    assert all(not torch.equal(moved[i], x[i]) for i in range(len(x)))
    erased = random_erasing(x + 0.5, cfg, g)
    assert all((erased[i] == 0).any() for i in range(len(x)))
    area = (erased == 0).flatten(1).float().mean(1)
    assert (area >= 0.01).all() and (area <= 0.34).all()


def test_flip_is_an_exact_mirror():
    images = _images()
    aug = BatchAugmenter(AugmentConfig("vgg", **{**OFF, "p_flip": 1.0}), torch.Generator().manual_seed(0))
    x, _ = aug.train(images, torch.arange(6))
    expected = ten_crop(images.unsqueeze(1).float().flip(-1) / 255, 40).flatten(0, 1)
    assert torch.equal(x, expected)


def test_rotation_of_a_centred_disc_keeps_it_in_place():
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disc = (((yy - 23.5) ** 2 + (xx - 23.5) ** 2) < 100).float()[None, None]
    rotated = random_affine(disc, AugmentConfig(p_rescale=0, p_shift=0, p_rotate=1), torch.Generator().manual_seed(1))
    assert (rotated - disc).abs().mean() < 0.02


def test_same_seed_same_augmentation():
    images = _images()
    a = BatchAugmenter(AugmentConfig("vgg"), torch.Generator().manual_seed(5)).train(images, torch.arange(6))[0]
    b = BatchAugmenter(AugmentConfig("vgg"), torch.Generator().manual_seed(5)).train(images, torch.arange(6))[0]
    assert torch.equal(a, b)


def test_effnet_and_vit_recipes():
    images = _images()
    eff = BatchAugmenter(AugmentConfig("effnet"), torch.Generator().manual_seed(0))
    x, y = eff.train(images, torch.arange(6))
    assert x.shape == (6, 1, 40, 40) and y.tolist() == list(range(6))
    full = images.unsqueeze(1).float() / 255
    for i in range(6):  # every random crop is a 40x40 window of its own image (or its mirror)
        windows = full[i, 0].unfold(0, 40, 1).unfold(1, 40, 1).reshape(-1, 40, 40)
        mirrored = full[i, 0].flip(-1).unfold(0, 40, 1).unfold(1, 40, 1).reshape(-1, 40, 40)
        assert any(torch.equal(x[i, 0], w) for w in torch.cat([windows, mirrored]))
    vit = BatchAugmenter(AugmentConfig("vit"), torch.Generator().manual_seed(0))
    x, _ = vit.train(images, torch.arange(6))
    assert x.shape == (6, 3, 224, 224) and -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x[:, 0], x[:, 1])
    assert vit.eval_views(images).shape == (6, 1, 3, 224, 224)


def test_a_training_batch_reads_no_value_back_from_the_device(monkeypatch):
    """On a GPU, reading a tensor's value on the host (``if tensor.any()``) waits for the device every
    batch; the augmentation decides everything from its config and its random tensors alone."""
    augmenter = BatchAugmenter(AugmentConfig(recipe="vgg"), torch.Generator().manual_seed(0))
    images = torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8)
    labels = torch.arange(8) % 7

    def no_host_read(self):
        raise AssertionError("a tensor value was read on the host")

    monkeypatch.setattr(torch.Tensor, "__bool__", no_host_read)
    inputs, targets = augmenter.train(images, labels)
    assert inputs.shape == (80, 1, 40, 40) and targets.shape == (80,)
