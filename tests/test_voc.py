"""VOC reading and writing: round trip, a hand-written VOC2007 fixture, malformed inputs."""

import warnings

import cv2
import numpy as np
import pytest

from sppdet.data import voc
from sppdet.errors import DatasetError

VOC2007_XML = """<annotation>
	<folder>VOC2007</folder>
	<filename>000005.jpg</filename>
	<source><database>The VOC2007 Database</database><annotation>PASCAL VOC2007</annotation></source>
	<owner><flickrid>nobody</flickrid></owner>
	<size><width>500</width><height>375</height><depth>3</depth></size>
	<segmented>0</segmented>
	<object>
		<name>chair</name><pose>Rear</pose><truncated>0</truncated><difficult>0</difficult>
		<bndbox><xmin>263</xmin><ymin>211</ymin><xmax>324</xmax><ymax>339</ymax></bndbox>
	</object>
	<object>
		<name>person</name><pose>Unspecified</pose><truncated>1</truncated><difficult>1</difficult>
		<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>500</xmax><ymax>375</ymax></bndbox>
		<part><name>head</name><bndbox><xmin>20</xmin><ymin>2</ymin><xmax>60</xmax><ymax>40</ymax></bndbox></part>
	</object>
	<object>
		<name>chair</name><occluded>1</occluded>
		<bndbox><xmin>5.0</xmin><ymin>10</ymin><xmax>520</xmax><ymax>20</ymax></bndbox>
	</object>
</annotation>
"""


def make_dataset(root, annotations, splits):
    (root / "JPEGImages").mkdir(parents=True)
    for ann in annotations:
        voc.write_annotation(root / "Annotations" / f"{ann.image_id}.xml", ann)
        cv2.imwrite(str(root / "JPEGImages" / f"{ann.image_id}.jpg"),
                    np.zeros((ann.height, ann.width, 3), np.uint8))
    for split, ids in splits.items():
        voc.write_split(root, split, ids)


def sample(image_id, names=("square", "circle")):
    return voc.Annotation(image_id=image_id, width=64, height=48,
                          boxes=np.array([[0, 0, 10, 20], [30, 5, 64, 48]], np.float32),
                          names=tuple(names), difficult=np.array([False, True]))


def test_round_trip(tmp_path):
    original = sample("a")
    make_dataset(tmp_path, [original], {"trainval": ["a"]})
    dataset = voc.VocDataset(tmp_path, "trainval")
    read = dataset.annotation("a")
    np.testing.assert_array_equal(read.boxes, original.boxes)
    assert read.names == original.names
    np.testing.assert_array_equal(read.difficult, original.difficult)
    assert (read.width, read.height) == (64, 48)
    assert dataset.classes == ("circle", "square")
    assert read.labels(dataset.classes).tolist() == [2, 1]
    assert dataset.image_path("a").name == "a.jpg"


def test_voc2007_fixture(tmp_path):
    path = tmp_path / "000005.xml"
    path.write_text(VOC2007_XML)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ann = voc.read_annotation(path)
    assert (ann.width, ann.height, ann.filename) == (500, 375, "000005.jpg")
    assert ann.names == ("chair", "person", "chair")  # the <part> is not an object
    np.testing.assert_array_equal(ann.boxes, [[262, 210, 324, 339], [0, 0, 500, 375], [4, 9, 500, 20]])
    assert ann.difficult.tolist() == [False, True, False]


def test_box_empty_after_clipping_is_dropped_with_warning(tmp_path):
    path = tmp_path / "x.xml"
    path.write_text(VOC2007_XML.replace("<xmin>263</xmin>", "<xmin>600</xmin>")
                    .replace("<xmax>324</xmax>", "<xmax>700</xmax>"))
    with pytest.warns(voc.DatasetWarning, match="dropped 1 box"):
        ann = voc.read_annotation(path)
    assert ann.names == ("person", "chair")


def test_voc_classes_detected(tmp_path):
    ann = voc.Annotation("a", 64, 48, np.array([[0, 0, 5, 5]], np.float32), ("dog",), np.array([False]))
    make_dataset(tmp_path, [ann], {"trainval": ["a"]})
    assert voc.VocDataset(tmp_path, "trainval").classes == voc.VOC_CLASSES
    assert voc.VocDataset(tmp_path, "trainval", classes=["dog"]).classes == ("dog",)


@pytest.mark.parametrize("mutate, message", [
    (lambda x: x.replace("<xmin>263</xmin>", "<xmin>abc</xmin>"), "not a number"),
    (lambda x: x.replace("<ymax>339</ymax>", ""), "missing <ymax>"),
    (lambda x: x.replace("</annotation>", ""), "malformed XML"),
    (lambda x: x.replace("<size><width>500</width>", "<size>"), "missing <width>"),
    (lambda x: x.replace("<name>chair</name><pose>Rear</pose>", "<pose>Rear</pose>"), "missing <name>"),
])
def test_malformed_xml_names_the_file(tmp_path, mutate, message):
    path = tmp_path / "bad.xml"
    path.write_text(mutate(VOC2007_XML))
    with pytest.raises(DatasetError, match=message) as info:
        voc.read_annotation(path)
    assert str(path) in str(info.value)


def test_missing_split_xml_and_image(tmp_path):
    make_dataset(tmp_path, [sample("a"), sample("b")], {"trainval": ["a", "b"], "broken": ["a", "zz"]})
    with pytest.raises(DatasetError, match="split file not found") as info:
        voc.VocDataset(tmp_path, "nosuch")
    assert "nosuch.txt" in str(info.value) and "trainval" in str(info.value)
    with pytest.raises(DatasetError, match="zz.xml"):
        voc.VocDataset(tmp_path, "broken")
    (tmp_path / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(DatasetError, match="image for 'b'"):
        voc.VocDataset(tmp_path, "trainval")
    assert len(voc.VocDataset(tmp_path, "trainval", check_images=False)) == 2
