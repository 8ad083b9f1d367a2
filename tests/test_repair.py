"""Each Thyme auto-correction (THYME.md §2), alone and together, on model-style code."""

import ast

import pytest

from sandbox.protocol import VIRTUAL_OUTPUT_DIR
from sandbox.repair import RepairContext, clamp_box, repair

SCRATCH = "/scratch/job1"


def ctx(**kw) -> RepairContext:
    base = dict(inputs=["/data/in/photo.jpg"], image_size=lambda: (640, 480), output_dir=SCRATCH)
    base.update(kw)
    return RepairContext(**base)


def test_valid_code_is_untouched():
    code = "import cv2\nimg = cv2.imread(image_path)  # keep me\nprint(img.shape)\n"
    assert repair(code, ctx()) == (code, [])


def test_indentation_first_line_flush_left_rest_indented():
    code = "import cv2\n    img = cv2.imread(image_path)\n    print(img.shape)"
    fixed, fired = repair(code, ctx())
    assert fired == ["indentation"]
    assert fixed == "import cv2\nimg = cv2.imread(image_path)\nprint(img.shape)"


def test_indentation_whole_block_indented():
    code = "    x = 1\n    # comment survives\n    print(x)"
    fixed, fired = repair(code, ctx())
    assert fired == ["indentation"]
    assert fixed == "x = 1\n# comment survives\nprint(x)"


def test_unfixable_syntax_is_left_alone():
    code = "print(1"
    assert repair(code, ctx()) == (code, [])


def test_image_path_literal_replaced_by_real_input():
    code = 'image_path = "/mnt/user/some_image.jpg"  # the model guessed\nprint(image_path)'
    fixed, fired = repair(code, ctx())
    assert fired == ["image_path"]
    assert fixed == "image_path = '/data/in/photo.jpg'  # the model guessed\nprint(image_path)"


def test_image_path_kept_when_it_names_an_input_or_an_earlier_output():
    assert repair('image_path = "/data/in/photo.jpg"', ctx()) == ('image_path = "/data/in/photo.jpg"', [])
    known = ctx(is_known_file=lambda p: p == f"{SCRATCH}/crop.jpg")
    fixed, fired = repair(f'image_path = "{VIRTUAL_OUTPUT_DIR}/crop.jpg"', known)
    assert fired == ["output_dir"] and fixed == f'image_path = "{SCRATCH}/crop.jpg"'


def test_image_path_not_replaced_without_inputs():
    code = 'image_path = "/x.jpg"'
    assert repair(code, ctx(inputs=[])) == (code, [])


@pytest.mark.parametrize("box, expected", [
    ([100, 50, 300, 200], [100, 50, 300, 200]),      # inside: unchanged
    ([300, 200, 100, 50], [100, 50, 300, 200]),      # corners swapped
    ([-20, -5, 700, 900], [0, 0, 640, 480]),         # clamped to the image
    ([100, 100, 110, 120], [73, 78, 137, 142]),      # grown to 64 px around the centre
    ([630, 470, 640, 480], [576, 416, 640, 480]),    # grown inside the border
    ([10.5, 20.0, 400.0, 300.0], [10.5, 20.0, 400.0, 300.0]),
])
def test_clamp_box(box, expected):
    assert clamp_box(box, 640, 480) == expected


def test_clamp_box_image_smaller_than_minimum_side():
    assert clamp_box([0, 0, 10, 10], 40, 30) == [0, 0, 40, 30]


@pytest.mark.parametrize("line, expected", [
    ("x1, y1, x2, y2 = 500, 400, 900, 700", "x1, y1, x2, y2 = (500, 400, 640, 480)"),
    ("left, top, right, bottom = 10, 10, 20, 20", "left, top, right, bottom = (0, 0, 64, 64)"),
    ("bbox = [-10, 0, 200, 100]", "bbox = [0, 0, 200, 100]"),
    ("crop_box = (300, 200, 100, 50)", "crop_box = (100, 50, 300, 200)"),
    ("region = img.crop((600, 0, 700, 100))", "region = img.crop((576, 0, 640, 100))"),
])
def test_crop_box_literals_are_clamped(line, expected):
    fixed, fired = repair(line, ctx())
    assert fired == ["crop_box"]
    assert fixed == expected


def test_crop_box_needs_the_image_size_only_when_a_box_exists():
    calls = []

    def size():
        calls.append(1)
        return (640, 480)

    repair("print(1)", ctx(image_size=size))
    assert calls == []
    repair("box = (0, 0, 10, 10)", ctx(image_size=size))
    assert calls == [1]


def test_non_box_tuples_untouched():
    code = "size = (10, 10, 5000, 5000)\nx, y, w, h = 1, 2, 3000, 4000"
    assert repair(code, ctx()) == (code, [])


def test_cv_aliases_mean_cv2():
    code = "import cv2\nimg = cv.imread(image_path)\ng = CV.cvtColor(img, cv4.COLOR_BGR2GRAY)"
    fixed, fired = repair(code, ctx())
    assert fired == ["cv2_alias"]
    assert fixed == "import cv2\nimg = cv2.imread(image_path)\ng = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)"


def test_cv_alias_left_alone_when_bound():
    code = "import cv2 as cv\nimg = cv.imread(image_path)"
    assert repair(code, ctx()) == (code, [])


def test_output_dir_redirected_in_strings_and_fstrings():
    code = (f'import os\nos.makedirs("{VIRTUAL_OUTPUT_DIR}", exist_ok=True)\n'
            f'p = f"{VIRTUAL_OUTPUT_DIR}/crop_{{1}}.jpg"  # saved here\n')
    fixed, fired = repair(code, ctx())
    assert fired == ["output_dir"]
    assert VIRTUAL_OUTPUT_DIR not in fixed
    assert f'os.makedirs("{SCRATCH}", exist_ok=True)' in fixed
    assert f'p = f"{SCRATCH}/crop_{{1}}.jpg"  # saved here' in fixed


@pytest.mark.parametrize("code, expected", [
    ('print(f"{x:.2f}")', 'print(f"{x:.8f}")'),
    ('print(f"area {a * 2:10.3f} m")', 'print(f"area {a * 2:10.8f} m")'),
    ('print("{:.1f} and {:.4f}".format(a, b))', 'print("{:.8f} and {:.8f}".format(a, b))'),
    ('print("%.2f" % x)', 'print("%.8f" % x)'),
    ('print(format(x, ".3f"))', 'print(format(x, ".8f"))'),
    ('print(f"{x:.12f}")', None),        # two digits: already precise
    ('label = "{:.2f}"', None),          # not used as a format: untouched
])
def test_float_precision(code, expected):
    fixed, fired = repair(code, ctx())
    if expected is None:
        assert (fixed, fired) == (code, [])
    else:
        assert fired == ["float_precision"] and fixed == expected


def test_all_repairs_together_keep_comments_and_parse():
    code = (
        "import cv2\n"
        "    # model indented everything after the first line\n"
        "    image_path = 'original.jpg'\n"
        "    img = cv.imread(image_path)\n"
        "    x1, y1, x2, y2 = 600, 10, 700, 20  # the sign\n"
        "    crop = img[y1:y2, x1:x2]\n"
        f"    out = '{VIRTUAL_OUTPUT_DIR}/sign.jpg'\n"
        "    cv2.imwrite(out, crop)\n"
        "    print(f'{crop.mean():.2f}', out)\n"
    )
    fixed, fired = repair(code, ctx())
    assert fired == ["indentation", "image_path", "output_dir", "crop_box", "cv2_alias",
                     "float_precision"]
    ast.parse(fixed)
    assert "# the sign" in fixed and "# model indented" in fixed
    assert "x1, y1, x2, y2 = (576, 0, 640, 64)" in fixed
    assert "image_path = '/data/in/photo.jpg'" in fixed


def test_unicode_before_an_edit_keeps_offsets_right():
    code = 'note = "größe — überprüft"; img = cv.imread(image_path)'
    fixed, fired = repair(code, ctx())
    assert fixed == 'note = "größe — überprüft"; img = cv2.imread(image_path)'
