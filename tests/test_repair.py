"""Each Thyme auto-correction (THYME.md §2), alone and together, on model-style code."""

import ast

import pytest

from sandbox.protocol import VIRTUAL_OUTPUT_DIR
from sandbox.repair import RepairContext, clamp_box, output_subfolders, repair

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


def test_indentation_first_line_deeper_than_the_rest():
    code = "    import cv2\nimg = cv2.imread(image_path)\nif img is not None:\n    print(img.shape)"
    fixed, fired = repair(code, ctx())
    assert fired == ["indentation"]
    assert fixed == "import cv2\nimg = cv2.imread(image_path)\nif img is not None:\n    print(img.shape)"


def test_indentation_first_line_deeper_and_the_rest_indented():
    code = "\n        from PIL import Image\n    img = Image.open(image_path)\n    print(img.size)"
    fixed, fired = repair(code, ctx())
    assert fired == ["indentation"]
    assert fixed == "\nfrom PIL import Image\nimg = Image.open(image_path)\nprint(img.size)"


def test_indentation_tabs_mixed_with_spaces_read_at_python_tab_stops():
    code = "if True:\n\tx = 1\n        y = 2\n\tprint(x, y)"
    fixed, fired = repair(code, ctx())
    assert fired == ["indentation"]
    assert fixed == "if True:\n        x = 1\n        y = 2\n        print(x, y)"


def test_valid_code_opening_a_block_is_not_realigned():
    code = "for k in range(3):\n    print(k)"  # the original broke this; we only fix what fails
    assert repair(code, ctx()) == (code, [])


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


# The original's rule, which released checkpoints were trained with (tests/test_sandbox_compat.py).
@pytest.mark.parametrize("box, expected", [
    ([100, 50, 300, 200], [100, 50, 300, 200]),      # inside: unchanged
    ([300, 200, 100, 50], [100, 50, 300, 200]),      # corners swapped
    ([-20, -5, 700, 900], [0, 0, 640, 480]),         # clamped to the image
    ([100, 100, 110, 120], [100, 100, 164, 164]),    # grown to 64 px from the first corner
    ([630, 470, 640, 480], [576, 416, 640, 480]),    # no room: grown back from the far edge
    ([10.5, 20.0, 400.7, 300.0], [10, 20, 401, 300]),  # integers (Python rounding)
])
def test_clamp_box(box, expected):
    assert clamp_box(box, 640, 480) == expected


def test_clamp_box_image_smaller_than_minimum_side():
    assert clamp_box([0, 0, 10, 10], 40, 30) == [0, 0, 40, 30]


@pytest.mark.parametrize("line, expected", [
    ("x1, y1, x2, y2 = 500, 400, 900, 700", "x1, y1, x2, y2 = (500, 400, 640, 480)"),
    ("left, top, right, bottom = 10, 10, 20, 20", "left, top, right, bottom = (10, 10, 74, 74)"),
    ("crop_box = (300, 200, 100, 50)", "crop_box = (100, 50, 300, 200)"),
    ("coordinates = (620, 470, 630, 475)  # tiny", "coordinates = (576, 416, 640, 480)  # tiny"),
    ("x1, y1, x2, y2 = 10.4, 20.6, 700.2, 300.0", "x1, y1, x2, y2 = (10, 21, 640, 300)"),
    # inherited as is: one corner name makes four names a box, read as x1, y1, x2, y2
    ("left, top, width, height = 100, 100, 50, 50", "left, top, width, height = (50, 50, 114, 114)"),
])
def test_crop_box_literals_are_clamped(line, expected):
    fixed, fired = repair(line, ctx())
    assert fired == ["crop_box"]
    assert fixed == expected


@pytest.mark.parametrize("line", [
    "bbox = [-10, 0, 200, 100]",                 # a list
    "region = img.crop((600, 0, 700, 100))",     # an argument (PIL pads it)
    "coords = (-10, -20, 50, 40)",               # negative literals
    "roi = (600, 0, 700, 100)",                  # not one of the box names
    "box = (10.2, 20.0, 400.0, 300.0)",          # inside once rounded
])
def test_boxes_the_original_never_clamped_are_left_alone(line):
    assert repair(line, ctx()) == (line, [])


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
    ('print("{:.1f} and {:.4f}".format(a, b))', 'print("{:.8f} and {:.8f}".format(a, b))'),
    ('fmt = "{:.2f}"  # formatted later', 'fmt = "{:.8f}"  # formatted later'),
    ('print(f"{x:.9f}")', 'print(f"{x:.8f}")'),  # the original's rule: any one digit
    ('print(f"area {a * 2:10.3f} m")', None),    # width given: the original left it
    ('print("%.2f" % x)', None),
    ('print(format(x, ".3f"))', None),
    ('print(f"{x:.12f}")', None),                # two digits: already precise
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
    assert "x1, y1, x2, y2 = (576, 10, 640, 74)" in fixed
    assert "image_path = '/data/in/photo.jpg'" in fixed


def test_unicode_before_an_edit_keeps_offsets_right():
    code = 'note = "größe — überprüft"; img = cv.imread(image_path)'
    fixed, fired = repair(code, ctx())
    assert fixed == 'note = "größe — überprüft"; img = cv2.imread(image_path)'


def test_output_subfolders_from_literals_and_fstring_prefixes():
    code = (f"a = '{SCRATCH}/crops/c1.jpg'\n"
            f"b = f'{SCRATCH}/zoom/x2/{{name}}_{{k}}.png'\n"
            f"c = f'{SCRATCH}/{{sub}}/d.png'\n"          # folder only known at run time
            f"d = '{SCRATCH}/top.png'\n"                 # no sub-folder
            f"e = '{SCRATCH}/my crops/c.png'\n"           # spaces kept
            f"f = '{SCRATCH}/a/../../escape/x.png'\n"     # would leave the output dir
            "g = '/elsewhere/dir/x.png'\n"
            f"h = 'see {SCRATCH}/notes/n.png'\n")         # not a path literal
    assert output_subfolders(code, SCRATCH) == [
        f"{SCRATCH}/crops", f"{SCRATCH}/zoom/x2", f"{SCRATCH}/my crops"]


def test_output_subfolders_of_unparsable_code_is_empty():
    assert output_subfolders(f"x = '{SCRATCH}/a/b.png'\nprint(", SCRATCH) == []
