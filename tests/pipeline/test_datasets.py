"""The evaluation-data loader: ImageFolder, YOLO and COCO layouts, hashing and every error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvdeploy.demo import eval_set
from cvdeploy.errors import ConfigError
from cvdeploy.pipeline.datasets import (
    ClassificationSample,
    DetectionSample,
    EvalDataError,
    content_hash,
    load_eval_data,
)


def write_image(path: Path, size: tuple[int, int] = (20, 10), colour: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, 0, 0)).save(path)
    return path


def make_imagefolder(root: Path) -> Path:
    write_image(root / "dog" / "b.png")
    write_image(root / "dog" / "a.png")
    write_image(root / "cat" / "x.jpg")
    return root


def make_yolo(root: Path, labels: dict[str, str] | None = None, names: str = "[a, b]") -> Path:
    """A YOLO set under root: data.yaml, images/val/*.png (20x10), labels/val/*.txt."""
    labels = labels if labels is not None else {"one": "0 0.5 0.5 0.5 0.2\n", "two": ""}
    for stem, text in labels.items():
        write_image(root / "images" / "val" / f"{stem}.png")
        (root / "labels" / "val").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "val" / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(f"path: .\nval: images/val\nnames: {names}\n")
    return root


def make_coco(root: Path, annotations: list[dict] | None = None, in_images: bool = False) -> Path:
    folder = root / "images" if in_images else root
    write_image(folder / "p.png", (40, 30))
    write_image(folder / "q.png", (40, 30))
    data = {
        "images": [
            {"id": 1, "file_name": "q.png", "width": 40, "height": 30},
            {"id": 2, "file_name": "p.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
        "annotations": annotations
        if annotations is not None
        else [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]},
            {"id": 12, "image_id": 2, "category_id": 3, "bbox": [5, 5, 5, 5], "iscrowd": 1},
        ],
    }
    path = root / "ann.json"
    path.write_text(json.dumps(data))
    return path


# --- ImageFolder -------------------------------------------------------------------------------


def test_imagefolder_classes_are_sorted_folder_names(tmp_path: Path) -> None:
    data = load_eval_data(make_imagefolder(tmp_path / "set"))
    assert (data.task, data.format, data.names) == ("classification", "imagefolder", ["cat", "dog"])
    assert data.source == (tmp_path / "set").resolve()
    assert [(s.path.name, s.label) for s in data.samples] == [
        ("x.jpg", 0),
        ("a.png", 1),
        ("b.png", 1),
    ]
    assert all(isinstance(s, ClassificationSample) for s in data.samples)
    assert len(data) == 3
    assert data.describe() == "ImageFolder of 3 images in 2 classes"


def test_imagefolder_counts_nested_images_and_skips_hidden_and_loose_files(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path)
    write_image(root / "cat" / "deeper" / "y.png")
    write_image(root / "cat" / ".hidden.png")
    write_image(root / ".ipynb_checkpoints" / "z.png")
    write_image(root / "loose.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    data = load_eval_data(root, "classification")
    assert data.names == ["cat", "dog", "empty"]
    assert sorted(s.path.name for s in data.samples if s.label == 0) == ["x.jpg", "y.png"]


def test_imagefolder_without_any_image_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "readme.txt").write_text("x")
    with pytest.raises(EvalDataError, match="no image in any of them") as info:
        load_eval_data(tmp_path)
    assert str(tmp_path.resolve()) in str(info.value)


# --- YOLO --------------------------------------------------------------------------------------


def test_yolo_yaml_converts_normalised_boxes_to_pixels(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "ds")
    data = load_eval_data(root / "data.yaml", "detection")
    assert (data.task, data.format, data.names) == ("detection", "yolo", ["a", "b"])
    one, two = data.samples
    assert isinstance(one, DetectionSample)
    assert (one.path.name, one.width, one.height) == ("one.png", 20, 10)
    np.testing.assert_allclose(one.boxes, [[5.0, 4.0, 15.0, 6.0]])
    assert one.boxes.dtype == np.float64
    assert one.classes.dtype == np.int64
    assert one.classes.tolist() == [0]
    assert two.boxes.shape == (0, 4)
    assert two.classes.shape == (0,)
    assert data.describe() == "YOLO set of 2 images, 1 box in 2 classes (1 background image)"


def test_yolo_directory_with_data_yaml_loads_like_the_yaml(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    from_dir, from_yaml = load_eval_data(root), load_eval_data(root / "data.yaml")
    assert from_dir.sha256 == from_yaml.sha256
    assert [s.path for s in from_dir.samples] == [s.path for s in from_yaml.samples]


def test_yolo_directory_yaml_without_split_falls_back_to_images_val(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "data.yaml").unlink()
    (root / "dataset.yaml").write_text("names: {0: a, 1: b}\n")
    data = load_eval_data(root)
    assert data.names == ["a", "b"]
    assert len(data) == 2


def test_yolo_yaml_path_is_relative_to_the_yaml_and_test_key_is_used(tmp_path: Path) -> None:
    make_yolo(tmp_path / "data" / "shapes")
    cfg = tmp_path / "configs" / "eval.yaml"
    cfg.parent.mkdir()
    cfg.write_text("path: ../data/shapes\ntest: images/val\nnames:\n  0: a\n  1: b\n")
    data = load_eval_data(cfg)
    assert data.source == cfg.resolve()
    assert [s.path.name for s in data.samples] == ["one.png", "two.png"]


def test_yolo_image_list_txt_is_relative_to_its_folder(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "val.txt").write_text("./images/val/two.png\n\nimages/val/one.png\n")
    (root / "data.yaml").write_text("val: val.txt\nnames: [a, b]\n")
    data = load_eval_data(root / "data.yaml")
    assert [s.path.name for s in data.samples] == ["one.png", "two.png"]


def test_yolo_image_list_with_missing_image_names_list_line(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "val.txt").write_text("images/val/one.png\nimages/val/gone.png\n")
    (root / "data.yaml").write_text("val: val.txt\nnames: [a, b]\n")
    with pytest.raises(EvalDataError, match=r"val\.txt:2: image images/val/gone\.png not found"):
        load_eval_data(root)


def test_yolo_segment_line_becomes_its_bounding_box(tmp_path: Path) -> None:
    root = make_yolo(tmp_path, {"one": "1 0.1 0.2 0.5 0.2 0.3 0.8\n"})
    (sample,) = load_eval_data(root).samples
    assert isinstance(sample, DetectionSample)
    np.testing.assert_allclose(sample.boxes, [[2.0, 2.0, 10.0, 8.0]])
    assert sample.classes.tolist() == [1]


def test_yolo_coordinates_within_tolerance_are_clipped(tmp_path: Path) -> None:
    root = make_yolo(tmp_path, {"one": "0 0.5 0.5 1.0005 0.5\n"})
    (sample,) = load_eval_data(root).samples
    assert isinstance(sample, DetectionSample)
    np.testing.assert_allclose(sample.boxes, [[0.0, 2.5, 20.0, 7.5]])


def test_yolo_missing_label_file_names_image_and_expected_label(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "labels" / "val" / "two.txt").unlink()
    with pytest.raises(EvalDataError) as info:
        load_eval_data(root)
    message = str(info.value)
    assert str(root.resolve() / "images" / "val" / "two.png") in message
    assert str(root.resolve() / "labels" / "val" / "two.txt") in message


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("0 0.5 0.5 0.2", "expected 5 fields"),
        ("0 0.5 0.5 0.2 0.2 0.1", "expected 5 fields"),
        ("0 0.5 half 0.2 0.2", "not a number"),
        ("2 0.5 0.5 0.2 0.2", "class id 2 is not an integer in 0..1"),
        ("-1 0.5 0.5 0.2 0.2", "class id -1"),
        ("0.5 0.5 0.5 0.2 0.2", "class id 0.5"),
        ("0 1.2 0.5 0.2 0.2", "normalised to 0..1"),
        ("0 0.5 0.5 0.2 -0.01", "normalised to 0..1"),
        ("0 0.5 0.5 0 0.2", "width and height must be positive"),
        ("0 0.5 0.5 0.2 nan", "finite"),
    ],
)
def test_yolo_malformed_line_names_file_line_and_reason(
    tmp_path: Path, line: str, reason: str
) -> None:
    root = make_yolo(tmp_path, {"one": f"1 0.5 0.5 0.1 0.1\n{line}\n"})
    with pytest.raises(EvalDataError, match=reason) as info:
        load_eval_data(root)
    assert f"{root.resolve() / 'labels' / 'val' / 'one.txt'}:2:" in str(info.value)


def test_yolo_directory_without_yaml_asks_for_names(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "data.yaml").unlink()
    with pytest.raises(EvalDataError, match=r"no data\.yaml or dataset\.yaml"):
        load_eval_data(root)


@pytest.mark.parametrize(
    ("yaml_text", "reason"),
    [
        ("val: images/val\n", "needs names"),
        ("val: images/val\nnames: {0: a, 2: b}\n", "without gaps"),
        ("val: images/nowhere\nnames: [a]\n", "neither a folder of images"),
        ("[just, a, list]\n", "must be a mapping"),
        ("val: [unclosed\n", "cannot read dataset YAML"),
    ],
)
def test_yolo_bad_yaml_names_the_file(tmp_path: Path, yaml_text: str, reason: str) -> None:
    root = make_yolo(tmp_path)
    (root / "data.yaml").write_text(yaml_text)
    with pytest.raises(EvalDataError, match=reason) as info:
        load_eval_data(root / "data.yaml")
    assert "data.yaml" in str(info.value)


def test_yolo_size_follows_exif_orientation(tmp_path: Path) -> None:
    root = make_yolo(tmp_path, {"one": "0 0.5 0.5 0.5 0.5\n"})
    image = root / "images" / "val" / "one.png"
    image.unlink()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the server serves it 10 wide, 20 high
    Image.new("RGB", (20, 10)).save(image.with_suffix(".jpg"), exif=exif)
    (sample,) = load_eval_data(root).samples
    assert isinstance(sample, DetectionSample)
    assert (sample.width, sample.height) == (10, 20)
    np.testing.assert_allclose(sample.boxes, [[2.5, 5.0, 7.5, 15.0]])


def test_yolo_unreadable_image_names_the_file(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    (root / "images" / "val" / "one.png").write_bytes(b"not a png")
    with pytest.raises(EvalDataError, match=r"one\.png is not a readable image"):
        load_eval_data(root)


# --- COCO --------------------------------------------------------------------------------------


def test_coco_boxes_categories_and_crowd(tmp_path: Path) -> None:
    data = load_eval_data(make_coco(tmp_path), "detection")
    assert (data.task, data.format) == ("detection", "coco")
    assert data.names == ["three", "seven"]  # sorted by category id: 3, 7
    p, q = data.samples
    assert isinstance(p, DetectionSample)
    assert isinstance(q, DetectionSample)
    assert [p.path.name, q.path.name] == ["p.png", "q.png"]
    assert p.boxes.shape == (0, 4)  # its only annotation is a crowd
    np.testing.assert_allclose(q.boxes, [[1, 2, 11, 7], [0, 0, 4, 4]])
    assert q.classes.tolist() == [1, 0]
    assert (q.width, q.height) == (40, 30)
    assert data.skipped_crowd == 1
    assert data.describe() == (
        "COCO JSON of 2 images, 2 boxes in 2 classes "
        "(1 background image, 1 crowd annotation skipped)"
    )


def test_coco_images_may_sit_in_an_images_folder(tmp_path: Path) -> None:
    data = load_eval_data(make_coco(tmp_path, in_images=True))
    assert all(s.path.parent.name == "images" for s in data.samples)


def test_coco_missing_image_file_is_named(tmp_path: Path) -> None:
    path = make_coco(tmp_path)
    (tmp_path / "q.png").unlink()
    with pytest.raises(EvalDataError, match=r"image id 1 file q\.png not found"):
        load_eval_data(path)


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ({"image_id": 1, "category_id": 7}, "bbox must be"),
        ({"image_id": 1, "category_id": 7, "bbox": [1, 2, 3]}, "bbox must be"),
        ({"image_id": 1, "category_id": 7, "bbox": [1, 2, -3, 4]}, "must be positive"),
        ({"image_id": 9, "category_id": 7, "bbox": [1, 2, 3, 4]}, "unknown image_id 9"),
        ({"image_id": 1, "category_id": 4, "bbox": [1, 2, 3, 4]}, "unknown category_id 4"),
    ],
)
def test_coco_malformed_annotation_names_its_id(
    tmp_path: Path, annotation: dict, reason: str
) -> None:
    path = make_coco(tmp_path, [{"id": 42, **annotation}])
    with pytest.raises(EvalDataError, match=reason) as info:
        load_eval_data(path)
    assert f"{path}: annotation id 42" in str(info.value)


def test_coco_declared_size_must_match_the_file(tmp_path: Path) -> None:
    path = make_coco(tmp_path)
    write_image(tmp_path / "p.png", (41, 30))
    with pytest.raises(EvalDataError, match=r"declared 40x30 but the file is 41x30"):
        load_eval_data(path)


def test_coco_without_required_lists_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(EvalDataError, match="not a COCO detection file"):
        load_eval_data(path)


# --- detection, task, limits -------------------------------------------------------------------


def test_missing_path_lists_accepted_layouts(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="does not exist; accepted layouts: an ImageFolder"):
        load_eval_data(tmp_path / "nope")


@pytest.mark.parametrize("name", ["empty_dir", "file.txt"])
def test_unrecognised_layout_lists_accepted_layouts(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    if name.endswith(".txt"):
        target.write_text("x")
    else:
        target.mkdir()
    with pytest.raises(EvalDataError, match="accepted layouts") as info:
        load_eval_data(target)
    assert name in str(info.value)


def test_coco_folder_given_instead_of_its_json_is_not_an_imagefolder(tmp_path: Path) -> None:
    make_coco(tmp_path, in_images=True)
    with pytest.raises(EvalDataError, match="pass the annotation JSON file itself"):
        load_eval_data(tmp_path)


def test_task_must_match_the_layout(tmp_path: Path) -> None:
    with pytest.raises(EvalDataError, match="holds classification data, but the model's task"):
        load_eval_data(make_imagefolder(tmp_path / "f"), "detection")
    with pytest.raises(EvalDataError, match="holds detection data"):
        load_eval_data(make_coco(tmp_path), "classification")
    with pytest.raises(EvalDataError, match="task must be"):
        load_eval_data(tmp_path / "f", "segmentation")
    assert load_eval_data(tmp_path / "f", "classify").task == "classification"


def test_eval_data_error_is_a_config_error() -> None:
    assert issubclass(EvalDataError, ConfigError)


def test_max_images_keeps_the_first_in_sorted_order(tmp_path: Path) -> None:
    root = make_yolo(tmp_path, {f"im{i}": "" for i in (3, 1, 2)})
    data = load_eval_data(root, max_images=2)
    assert [s.path.name for s in data.samples] == ["im1.png", "im2.png"]
    assert data.sha256 != load_eval_data(root).sha256
    with pytest.raises(EvalDataError, match="max_images must be at least 1"):
        load_eval_data(root, max_images=0)


# --- content hash ------------------------------------------------------------------------------


def test_hash_survives_moving_the_folder(tmp_path: Path) -> None:
    for make in (make_imagefolder, make_yolo):
        first = make(tmp_path / make.__name__ / "a")
        moved = shutil.copytree(first, tmp_path / make.__name__ / "elsewhere" / "b")
        assert load_eval_data(first).sha256 == load_eval_data(moved).sha256
    make_coco(tmp_path / "c1")
    shutil.copytree(tmp_path / "c1", tmp_path / "c2")
    assert load_eval_data(tmp_path / "c1" / "ann.json").sha256 == (
        load_eval_data(tmp_path / "c2" / "ann.json").sha256
    )


def test_hash_changes_with_one_byte_a_rename_or_a_new_file(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    base = load_eval_data(root).sha256
    label = root / "labels" / "val" / "one.txt"
    label.write_text(label.read_text().replace("0.2", "0.3"))
    edited = load_eval_data(root).sha256
    assert edited != base

    folder = make_imagefolder(tmp_path / "f")
    before = load_eval_data(folder).sha256
    image = folder / "cat" / "x.jpg"
    raw = bytearray(image.read_bytes())
    raw[-3] ^= 1
    image.write_bytes(bytes(raw))
    assert load_eval_data(folder).sha256 != before
    changed = load_eval_data(folder).sha256
    (folder / "dog" / "a.png").rename(folder / "dog" / "c.png")
    renamed = load_eval_data(folder).sha256
    assert renamed != changed
    write_image(folder / "dog" / "d.png")
    assert load_eval_data(folder).sha256 != renamed


def test_content_hash_is_unambiguous_and_order_free(tmp_path: Path) -> None:
    bc, c = tmp_path / "bc", tmp_path / "c"
    bc.write_bytes(b"bc")
    c.write_bytes(b"c")
    assert content_hash([("a", bc)]) != content_hash([("ab", c)])
    assert content_hash([("x", bc), ("y", c)]) == content_hash([("y", c), ("x", bc)])


# --- the bundled demo sets ---------------------------------------------------------------------


def test_demo_digits_set_is_the_held_out_split() -> None:
    data = load_eval_data(eval_set("digits"), "classification")
    assert data.format == "imagefolder"
    assert data.names == [str(i) for i in range(10)]
    assert len(data) == 360
    counts = np.bincount([s.label for s in data.samples if isinstance(s, ClassificationSample)])
    assert counts.min() >= 35


def test_demo_shapes_set_has_fifty_labelled_images() -> None:
    data = load_eval_data(eval_set("shapes"), "detection")
    assert data.format == "yolo"
    assert data.names == ["circle", "square", "triangle"]
    assert len(data) == 50
    assert sum(len(s.boxes) for s in data.samples if isinstance(s, DetectionSample)) == 185
    assert load_eval_data(eval_set("shapes").parent).sha256 == data.sha256


def test_unknown_demo_set_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="choose one of digits, shapes"):
        eval_set("mnist")


def test_max_images_on_an_imagefolder_keeps_every_class() -> None:
    data = load_eval_data(eval_set("digits"), max_images=25)
    labels = [s.label for s in data.samples]
    assert len(labels) == 25
    assert set(labels) == set(range(10))
    assert labels == sorted(labels)  # still in sorted order


# --- review fixes: symlink cycles, class list in the hash, crowd count, encodings ---------------


def test_imagefolder_symlink_loop_does_not_multiply_images(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "set")
    (root / "cat" / "loop").symlink_to("..")  # the dataset root: an ancestor
    (root / "cat" / "self").symlink_to(".")
    (root / "dog" / "back").symlink_to(root / "dog")
    data = load_eval_data(root)
    assert [(s.path.name, s.label) for s in data.samples] == [
        ("x.jpg", 0),
        ("a.png", 1),
        ("b.png", 1),
    ]


def test_imagefolder_follows_a_symlinked_folder_once(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "set")
    write_image(tmp_path / "more_cats" / "m.png")
    (root / "cat" / "linked").symlink_to(tmp_path / "more_cats")
    (root / "cat" / "linked_again").symlink_to(tmp_path / "more_cats")
    data = load_eval_data(root)
    cats = [s.path.name for s in data.samples if s.label == 0]
    assert sorted(cats) == ["m.png", "x.jpg"]


def test_imagefolder_hash_changes_when_an_empty_class_folder_is_added(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "set")
    before = load_eval_data(root)
    (root / "aardvark").mkdir()  # sorts first: every label shifts by one
    after = load_eval_data(root)
    assert after.names == ["aardvark", "cat", "dog"]
    assert after.sha256 != before.sha256


def test_coco_skipped_crowd_counts_only_the_kept_images(tmp_path: Path) -> None:
    path = make_coco(
        tmp_path,
        [
            {"id": 10, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 5], "iscrowd": 1},
            {"id": 11, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4]},
        ],
    )
    kept = load_eval_data(path, max_images=1)  # p.png (id 2) only; the crowd is on q.png
    assert [s.path.name for s in kept.samples] == ["p.png"]
    assert kept.skipped_crowd == 0
    assert "crowd" not in kept.describe()
    assert load_eval_data(path).skipped_crowd == 1


def test_yolo_label_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    label = root / "labels" / "val" / "one.txt"
    label.write_bytes(b"0 0.5 0.5 0.5 0.2 \xff\xfe\n")
    with pytest.raises(EvalDataError, match="is not UTF-8") as info:
        load_eval_data(root)
    assert f"label file {label}" in str(info.value)


def test_yolo_image_list_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    root = make_yolo(tmp_path)
    listing = root / "val.txt"
    listing.write_bytes(b"images/val/one.png\n\xe9\xe8.png\n")
    (root / "data.yaml").write_text("path: .\nval: val.txt\nnames: [a, b]\n")
    with pytest.raises(EvalDataError, match="is not UTF-8") as info:
        load_eval_data(root)
    assert f"image list {listing}" in str(info.value)
