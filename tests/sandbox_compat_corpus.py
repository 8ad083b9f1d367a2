"""Snippets of the kinds a Thyme model writes, run side by side through the original Thyme
sandbox module and ours (issue 15: the released checkpoints were trained on the original's
behaviour).

`scripts/sandbox_compat_record.py` runs every case through the original module and records its
outcomes in `tests/data/sandbox_compat_original.json`; `tests/test_sandbox_compat.py` runs the
same cases through `sandbox.Sandbox` and compares. This module needs only numpy and Pillow, so
the recording script can import it from the original's environment.

An outcome, per code block, is what the model is shown:
    {"status": "images", "images": [[width, height, mean pixel value], ...]}
    {"status": "text", "text": "<printed text, stripped>"}
    {"status": "error"}
Text is normalised the way our sandbox shows it: the real output directory reads as the virtual
`/mnt/data/temp_processed_images`, the input image by its file name.

A case whose outcome differs by design names the reason (`departure`) and what ours gives
(`ours`); docs/sandbox.md lists the same departures.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

OUT = "/mnt/data/temp_processed_images"
INPUT_NAME = "sample.png"
INPUT_SIZE = (640, 480)
ASPECT_LIMIT = 200  # the original trainer's check_aspect_ratio


def make_input(path: str) -> None:
    """The input image: lossless, with position-dependent pixels, so a crop's mean tells
    where it was taken."""
    w, h = INPUT_SIZE
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x // 40 + y // 40) * 13 % 256], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(path)


def image_entry(path: str) -> list:
    with Image.open(path) as img:
        return [img.width, img.height, round(float(np.asarray(img.convert("RGB")).mean()), 2)]


@dataclass(frozen=True)
class Case:
    id: str
    blocks: tuple[str, ...]            # one code block, or a session's blocks in order
    departure: str | None = None       # why ours differs from the original, by design
    ours: tuple[dict, ...] | None = None  # what ours gives instead (departures only)
    timeout: float | None = None       # ours; the original's limit is fixed at 10 s


def case(id: str, *blocks: str, departure: str | None = None, ours=None,
         timeout: float | None = None) -> Case:
    if (departure is None) != (ours is None):
        raise ValueError(f"{id}: a departure needs both its reason and our outcome")
    ours = tuple(ours) if isinstance(ours, list) else (ours,) if ours else None
    return Case(id, tuple(blocks), departure, ours, timeout)


def case_digest(case: Case) -> str:
    """Ties a recording to the snippets it was made from."""
    return hashlib.sha256(json.dumps(case.blocks).encode()).hexdigest()[:16]


ERROR = {"status": "error"}


def text(value: str) -> dict:
    return {"status": "text", "text": value}


# Reasons shared by several departures (docs/sandbox.md, "Departures from the original").
RESTRICTED_BUILTINS = ("the original replaces the builtins with an allow-list (no set, bool, "
                       "type, getattr, class statements, most exception classes); ours keeps them")
DENY_LIST = ("the original refuses any code matching a regex deny-list (sys., re.compile(, "
             "eval(, os.remove, ...); ours runs it under kernel confinement")
ONE_NAMESPACE = ("the original runs top-level code with separate globals and locals, so "
                 "functions and comprehensions cannot see top-level names; ours uses one namespace")
LOST_FUNCTIONS = ("the original trainer and evaluator drop values that do not pickle (functions, "
                  "lambdas, OpenCV objects) between code blocks; ours keeps the interpreter")
NO_SLASH = ("the original redirects the output directory only when written with a trailing "
            "slash; ours redirects it in every form")
SPACES = ("the original strips spaces from a sub-folder name before creating it, so saving "
          "there fails; ours creates the folder as named")
REALIGNED_VALID_CODE = ("the original re-indents the first line to match the second even when "
                        "the code is valid, which breaks code whose first statement opens a block "
                        "(for, while, if, with); ours re-indents only code that does not parse")
MENTIONS_OUTPUT_DIR = ("when code mentions the output directory but saves no image, the original "
                       "discards what it printed (no output); ours returns the printed text")
SYS_EXIT = ("sys.exit() after printing: the original's SystemExit escapes its handler (it "
            "would end the trainer); ours counts exit status 0 as done")
HOST_FILES = ("isolation: ours lets a snippet read only the interpreter's libraries and its "
              "inputs, and write only its output directory; the original ran inside the trainer "
              "with all of its file access")
OUTPUT_CAP = ("isolation: ours caps printed output (64,000 characters by default; more is an "
              "output_limit error); the original kept any amount")
MEMORY_CAP = ("isolation: ours caps a call's memory (1 GiB beyond the warmed interpreter by "
              "default); the original had no limit")
PRINTED_DIRECTORY = ("printing a directory (the output directory itself): the original took the "
                     "printed path for an image and failed on it; ours returns the text")
EXTRA_EXTENSIONS = ("ours also recognises printed .webp/.tif and upper-case extensions as images; "
                    "the original only lower-case jpg/jpeg/png/bmp/gif/tiff (so it shows no "
                    "output)")


_READ = "img = cv2.imread(image_path)\n"

CASES: list[Case] = [
    # ------------------------------------------------------------ (2a) pre-bound names
    case("prebound_cv2", _READ + "print(img.shape)"),
    case("prebound_np", "arr = np.array(Image.open(image_path))\nprint(arr.shape, arr.dtype)"),
    case("prebound_numpy", "print(numpy.zeros((2, 3)).sum() + 1)"),
    case("prebound_math", "print(math.sqrt(2) * math.pi)"),
    case("prebound_os", "print(os.path.splitext(os.path.basename(image_path)))"),
    case("prebound_json", 'print(json.dumps({"objects": 3, "label": "sign"}))'),
    case("prebound_re", 'print(re.findall(r"\\d+", "route 66 and exit 12"))'),
    case("prebound_random", "random.seed(7)\nprint(random.randint(1, 1000), random.random())"),
    case("prebound_string", "print(string.ascii_uppercase[:6] + string.digits[:3])"),
    case("prebound_image", "img = Image.open(image_path)\nprint(img.size, img.mode)"),
    case("prebound_temp_output_dir",
         "img = Image.open(image_path)\n"
         "out = os.path.join(temp_output_dir, 'left_half.png')\n"
         "img.crop((0, 0, 320, 480)).save(out)\n"
         "print(out)"),
    case("prebound_time", "start = time.time()\nprint(time.time() >= start)"),
    case("prebound_collections", "print(collections.Counter('abracadabra').most_common(2))"),
    case("prebound_itertools", "print(list(itertools.combinations('abc', 2)))"),
    case("prebound_datetime", "print(datetime.date(2024, 2, 29) + datetime.timedelta(days=1))"),
    case("prebound_cmath", "print(cmath.sqrt(-4))"),
    case("prebound_pil_module", "print(PIL.Image.open(image_path).size)"),
    case("prebound_shutil",
         "dst = os.path.join(temp_output_dir, 'copy.png')\n"
         "shutil.copy(image_path, dst)\n"
         "print(dst)"),
    case("prebound_unidentified_error", "print(UnidentifiedImageError.__name__)"),
    case("cv_typo_without_import",
         "img = cv.imread(image_path)\n"
         "gray = cv.cvtColor(img, cv.COLOR_BGR2GRAY)\n"
         "print(gray.shape, int(gray.mean()))"),
    case("cv_typos_with_import",
         "import cv2\n"
         "img = CV.imread(image_path)\n"
         "small = cv3.resize(img, (160, 120), interpolation=cv4.INTER_AREA)\n"
         f"cv2.imwrite('{OUT}/small.png', small)\n"
         f"print('{OUT}/small.png')"),
    case("cv_alias_imported_as_cv",
         "import cv2 as cv\n"
         "img = cv.imread(image_path)\n"
         "print(img.shape[:2])"),
    case("prebound_crop_zoom_save",
         _READ
         + "crop = img[100:200, 200:400]\n"
         "zoom = cv2.resize(crop, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)\n"
         "suffix = ''.join(random.choices(string.ascii_lowercase, k=6))\n"
         f"processed_path = f'{OUT}/sample_{{suffix}}.jpg'\n"
         "cv2.imwrite(processed_path, zoom)\n"
         "print(processed_path)"),
    # ------------------------------------------------------------ (2b) indentation
    case("first_line_deeper",
         "    import cv2\n" + _READ + "print(img.shape)"),
    case("first_line_deeper_then_block",
         "        from PIL import Image\n"
         "    img = Image.open(image_path)\n"
         "    if img.width > 100:\n"
         "        print('wide', img.width)"),
    case("first_line_flush_rest_indented",
         "import cv2\n    img = cv2.imread(image_path)\n    print(img.shape[1])"),
    case("whole_block_indented",
         "    img = Image.open(image_path)\n    w, h = img.size\n    print(w * h)"),
    case("leading_blank_lines_and_indent",
         "\n\n    img = Image.open(image_path)\n    print(img.size[0])"),
    case("comment_first_then_indented",
         "# read the image\n    img = Image.open(image_path)\n    print(img.mode)"),
    case("tabs_for_indentation",
         "img = Image.open(image_path)\nfor k in range(2):\n\tprint(k, img.size[k])"),
    case("first_statement_opens_block",
         "for k in range(3):\n    print(k * k)",
         departure=REALIGNED_VALID_CODE, ours=text("0\n1\n4")),
    case("tabs_and_spaces_mixed",
         "if True:\n\tx = 1\n        y = 2\n\tprint(x, y)"),
    case("three_space_block_after_first_line",
         "n = 2\nfor i in range(n):\n   print(i)"),
    case("unindent_mismatch", "if True:\n    a = 1\n  b = 2\nprint(a, b)"),
    case("style_quirks",
         "a = 1; b = 2\nf = lambda v: v * 2\ntotal = f(a) + \\\n    b\nx = None\n"
         "print(total, x == None)"),
    case("crlf_line_endings",
         "img = Image.open(image_path)\r\nprint(img.size)\r\n"),
    # ------------------------------------------------------------ (2c) sub-folders
    case("subfolder_literal_cv2",
         _READ
         + f"out = '{OUT}/crops/crop_1.jpg'\n"
         "cv2.imwrite(out, img[0:100, 0:200])\n"
         "print(out)"),
    case("subfolder_fstring_pil",
         "img = Image.open(image_path)\n"
         "name = os.path.splitext(os.path.basename(image_path))[0]\n"
         f"out = f'{OUT}/zoom/{{name}}_x2.png'\n"
         "img.crop((0, 0, 100, 80)).resize((200, 160)).save(out)\n"
         "print(out)"),
    case("subfolder_nested",
         "img = Image.open(image_path)\n"
         f"processed_path = '{OUT}/a/b/region.png'\n"
         "img.crop((10, 10, 110, 60)).save(processed_path)\n"
         "print(processed_path)"),
    case("subfolder_made_by_code",
         "img = Image.open(image_path)\n"
         f"os.makedirs('{OUT}/mine', exist_ok=True)\n"
         f"img.rotate(90, expand=True).save('{OUT}/mine/rot.png')\n"
         f"print('{OUT}/mine/rot.png')"),
    case("subfolder_with_space",
         "img = Image.open(image_path)\n"
         f"out = '{OUT}/my crops/c.png'\n"
         "img.crop((0, 0, 64, 64)).save(out)\n"
         "print(out)",
         departure=SPACES, ours={"status": "images", "images": [[64, 64, 12.68]]}),
    case("subfolder_two_files",
         "img = Image.open(image_path)\n"
         f"a, b = '{OUT}/parts/top.png', '{OUT}/parts/bottom.png'\n"
         "img.crop((0, 0, 640, 240)).save(a)\n"
         "img.crop((0, 240, 640, 480)).save(b)\n"
         "print(a)\nprint(b)"),
    case("output_dir_without_slash",
         "img = Image.open(image_path)\n"
         f"out = os.path.join('{OUT}', 'plain.png')\n"
         "img.crop((0, 0, 100, 100)).save(out)\n"
         "print(out)",
         departure=NO_SLASH, ours={"status": "images", "images": [[100, 100, 21.96]]}),
    # ------------------------------------------------------------ image_path literals
    case("image_path_guessed",
         'image_path = "/mnt/data/images/photo_1234.jpg"\n'
         "img = Image.open(image_path)\nprint(img.size)"),
    case("image_path_relative_guess",
         "image_path = 'image.jpg'\n" + _READ + "print(img.shape[0])"),
    case("image_path_predefined", "print(os.path.basename(image_path))"),
    case("image_path_in_output_dir_guess",
         f"image_path = '{OUT}/original.jpg'\nprint(Image.open(image_path).size)"),
    case("image_path_built_by_join",
         "image_path = os.path.join('/mnt/data', 'img.jpg')\nprint(Image.open(image_path).size)"),
    case("other_variable_not_repaired",
         "img_path = '/mnt/data/images/photo_1234.jpg'\n"
         "img = Image.open(img_path)\nprint(img.size)"),
    # ------------------------------------------------------------ crop boxes
    case("crop_unpack_out_of_range",
         "img = Image.open(image_path)\n"
         "x1, y1, x2, y2 = 500, 400, 900, 700\n"
         "crop = img.crop((x1, y1, x2, y2))\n"
         "print(crop.size, np.array(crop).mean())"),
    case("crop_unpack_tiny_box",
         "img = Image.open(image_path)\n"
         "left, top, right, bottom = 300, 200, 310, 205\n"
         "crop = img.crop((left, top, right, bottom))\n"
         "print(crop.size, np.array(crop).mean())"),
    case("crop_box_swapped_corners",
         "img = Image.open(image_path)\n"
         "bbox = (400, 300, 100, 50)\n"
         "crop = img.crop(bbox)\n"
         "print(crop.size, np.array(crop).mean())"),
    case("crop_box_list_not_clamped",
         "img = Image.open(image_path)\n"
         "crop_box = [600, 0, 700, 100]\n"
         "print(img.crop(crop_box).size)"),
    case("crop_call_literal_not_clamped",
         "img = Image.open(image_path)\n"
         "region = img.crop((600, 0, 700, 100))\n"
         "print(region.size, np.array(region).mean())"),
    case("crop_roi_name_not_clamped",
         "img = Image.open(image_path)\n"
         "roi = (600, 0, 700, 100)\n"
         "print(img.crop(roi).size)"),
    case("crop_numpy_slice_out_of_range",
         _READ + "crop = img[400:900, 500:1000]\nprint(crop.shape)"),
    case("crop_left_top_width_height",
         "img = Image.open(image_path)\n"
         "left, top, width, height = 100, 100, 50, 50\n"
         "crop = img.crop((left, top, left + width, top + height))\n"
         "print(crop.size, np.array(crop).mean())"),
    case("crop_float_box",
         "img = Image.open(image_path)\n"
         "x1, y1, x2, y2 = 10.5, 20.25, 700.7, 300.0\n"
         "print(x1, y1, x2, y2)"),
    case("crop_float_box_inside_untouched",
         "img = Image.open(image_path)\n"
         "x1, y1, x2, y2 = 10.5, 20.25, 300.7, 300.0\n"
         "print(x1, y1, x2, y2)"),
    case("crop_negative_coords",
         "img = Image.open(image_path)\n"
         "coords = (-10, -20, 50, 40)\n"
         "crop = img.crop(coords)\n"
         "print(crop.size, np.array(crop).mean())"),
    case("crop_box_whole_image_overshoot",
         "img = Image.open(image_path)\n"
         "box = (0, 0, 10000, 10000)\n"
         f"img.crop(box).save('{OUT}/all.png')\n"
         f"print('{OUT}/all.png')"),
    case("crop_coordinates_name",
         "img = Image.open(image_path)\n"
         "coordinates = (620, 470, 630, 475)\n"
         "crop = img.crop(coordinates)\n"
         "print(crop.size, np.array(crop).mean())"),
    case("crop_prefixed_corner_names",
         "img = Image.open(image_path)\n"
         "sign_x1, sign_y1, sign_x2, sign_y2 = 600, 440, 700, 520\n"
         "print(img.crop((sign_x1, sign_y1, sign_x2, sign_y2)).size)"),
    # ------------------------------------------------------------ float formats
    case("float_fstring_two_digits", "ratio = 2 / 3\nprint(f'ratio = {ratio:.2f}')"),
    case("float_format_method", "print('{:.1f} and {:.3f}'.format(1 / 7, 22 / 7))"),
    case("float_percent_operator", "print('%.2f' % (1 / 3))"),
    case("float_width_spec_untouched", "print(f'{1 / 3:10.3f}|')"),
    case("float_format_builtin_untouched", "print(format(1 / 3, '.2f'))",
         departure=RESTRICTED_BUILTINS, ours=text("0.33")),
    case("float_zero_digits", "print(f'{2 / 3:.0f}')"),
    case("float_two_digit_precision_untouched", "print(f'{2 / 3:.12f}')"),
    case("float_round_untouched", "print(round(2 / 3, 2))"),
    case("float_string_used_later", "fmt = '{:.2f}'\nprint(fmt.format(2 / 3))"),
    # ------------------------------------------------------------ processed_path
    case("processed_path_not_printed",
         "img = Image.open(image_path)\n"
         f"processed_path = '{OUT}/pp.png'\n"
         "img.crop((0, 0, 120, 90)).save(processed_path)"),
    case("processed_path_printed_once",
         "img = Image.open(image_path)\n"
         f"processed_path = '{OUT}/pp2.png'\n"
         "img.crop((100, 100, 300, 200)).save(processed_path)\n"
         "print(processed_path)"),
    case("processed_path_is_the_input",
         "processed_path = image_path\nprint('no processing needed')"),
    case("processed_path_list",
         "img = Image.open(image_path)\n"
         f"processed_path = ['{OUT}/l1.png', '{OUT}/l2.png']\n"
         "img.crop((0, 0, 100, 50)).save(processed_path[0])\n"
         "img.crop((0, 0, 50, 100)).save(processed_path[1])\n"
         "print(processed_path[0], processed_path[1])"),
    case("processed_path_missing_file_with_text",
         f"processed_path = '{OUT}/never_saved.png'\nprint('width is', 640)"),
    # ------------------------------------------------------------ printed paths
    case("printed_with_label",
         "img = Image.open(image_path)\n"
         f"p = '{OUT}/label.png'\n"
         "img.resize((320, 240)).save(p)\n"
         "print(f'Saved the zoomed region to: {p}')"),
    case("printed_two_paths",
         "img = Image.open(image_path)\n"
         f"a, b = '{OUT}/one.png', '{OUT}/two.png'\n"
         "img.crop((0, 0, 200, 100)).save(a)\n"
         "img.crop((200, 100, 300, 300)).save(b)\n"
         "print(a, b)"),
    case("printed_basename_only",
         "img = Image.open(image_path)\n"
         f"img.crop((0, 0, 90, 90)).save('{OUT}/base.png')\n"
         "print('base.png')"),
    case("saved_but_printed_no_path",
         "img = Image.open(image_path)\n"
         f"img.crop((0, 0, 90, 90)).save('{OUT}/silent.png')\n"
         "print('done')",
         departure=MENTIONS_OUTPUT_DIR, ours=text("done")),
    case("printed_path_never_saved",
         _READ
         + f"out = '{OUT}/missing_dir_x/../never.png'\n"
         "print(out)"),
    case("imwrite_failed_silently",
         _READ
         + f"ok = cv2.imwrite('{OUT}/bad.unknownext', img)\n"
         f"print('{OUT}/bad.png')"),
    case("saved_in_working_directory",
         "img = Image.open(image_path)\n"
         "img.crop((0, 0, 50, 70)).save('cwd_crop.png')\n"
         "print('cwd_crop.png')"),
    case("printed_webp",
         "img = Image.open(image_path)\n"
         f"img.crop((0, 0, 100, 100)).save('{OUT}/w.webp')\n"
         f"print('{OUT}/w.webp')",
         departure=EXTRA_EXTENSIONS, ours={"status": "images", "images": [[100, 100, 21.96]]}),
    case("printed_upper_case_extension",
         "img = Image.open(image_path)\n"
         f"img.crop((0, 0, 100, 100)).save('{OUT}/UP.PNG')\n"
         f"print('{OUT}/UP.PNG')",
         departure=EXTRA_EXTENSIONS, ours={"status": "images", "images": [[100, 100, 21.96]]}),
    case("text_mentions_output_dir_without_saving",
         f"out_dir = '{OUT}'\nprint('width:', Image.open(image_path).width)"),
    case("printed_file_name_in_a_sentence",
         "print('The answer is shown in figure.png, panel 2')"),
    case("print_temp_output_dir", "print(temp_output_dir)",
         departure=PRINTED_DIRECTORY, ours=text(OUT)),
    case("list_output_dir_first_block", "print(os.listdir(temp_output_dir))"),
    case("unicode_text", "print('温度: 25°C — größer')"),
    # ------------------------------------------------------------ several images
    case("loop_saves_three_crops",
         "img = Image.open(image_path)\n"
         "for k in range(3):\n"
         f"    p = f'{OUT}/tile_{{k}}.png'\n"
         "    img.crop((k * 200, 0, k * 200 + 200, 150)).save(p)\n"
         "    print(p)"),
    case("two_saved_one_printed",
         "img = Image.open(image_path)\n"
         f"img.crop((0, 0, 80, 80)).save('{OUT}/keep.png')\n"
         f"img.crop((80, 80, 160, 160)).save('{OUT}/other.png')\n"
         f"print('{OUT}/keep.png')"),
    case("extreme_aspect_ratio",
         "img = Image.open(image_path)\n"
         f"img.resize((640, 2)).save('{OUT}/strip.png')\n"
         f"print('{OUT}/strip.png')"),
    # ------------------------------------------------------------ errors
    case("name_error", "print(undefined_variable + 1)"),
    case("zero_division", "print('before')\nx = 1 / 0"),
    case("unfixable_syntax", "print('unclosed'"),
    case("imread_missing_file", "img = cv2.imread('/no/such/file.jpg')\nprint(img.shape)"),
    case("no_output_at_all", "x = 40 + 2"),
    case("missing_module", "import not_a_real_module\nprint(1)"),
    case("bare_expression_prints_nothing", "img = Image.open(image_path)\nimg.size"),
    case("subprocess_refused", "import subprocess\nprint(subprocess.run(['true']).returncode)"),
    case("infinite_loop", "n = 0\nwhile True:\n    n += 1", timeout=1.5),
    # ------------------------------------------------------------ what the original refuses
    case("builtin_set", "print(sorted(set([3, 1, 3, 2])))",
         departure=RESTRICTED_BUILTINS, ours=text("[1, 2, 3]")),
    case("class_statement",
         "class Box:\n    def __init__(self, w):\n        self.w = w\nprint(Box(5).w)",
         departure=RESTRICTED_BUILTINS, ours=text("5")),
    case("function_sees_top_level",
         "scale = 2\ndef zoom(v):\n    return v * scale\nprint(zoom(21))",
         departure=ONE_NAMESPACE, ours=text("42")),
    case("comprehension_sees_top_level",
         "k = 3\nprint([k * i for i in range(3)])",
         departure=ONE_NAMESPACE, ours=text("[0, 3, 6]")),
    case("re_compile", "pat = re.compile(r'[a-z]+')\nprint(pat.findall('ab 12 cd'))",
         departure=DENY_LIST, ours=text("['ab', 'cd']")),
    case("remove_own_file",
         f"p = '{OUT}/tmp.txt'\nopen(p, 'w').write('x')\nos.remove(p)\nprint(os.path.exists(p))",
         departure=DENY_LIST, ours=text("False")),
    case("name_main_guard",
         "def main():\n    print('ran')\n\nif __name__ == '__main__':\n    main()",
         departure=RESTRICTED_BUILTINS, ours=text("ran")),
    case("exit_builtin", "print('answer: 3')\nexit()",
         departure=RESTRICTED_BUILTINS, ours=text("answer: 3")),
    case("except_file_not_found",
         "try:\n    open('/no/such/file')\nexcept FileNotFoundError:\n    print('missing')",
         departure=RESTRICTED_BUILTINS, ours=text("missing")),
    case("function_reads_image_path",
         "def load():\n    return Image.open(image_path)\nprint(load().size)",
         departure=ONE_NAMESPACE, ours=text("(640, 480)")),
    case("sys_exit_after_print", "import sys\nprint('result: 7')\nsys.exit(0)",
         departure=SYS_EXIT, ours=text("result: 7")),
    # ------------------------------------------------------------ isolation
    case("read_host_file", "print(len(open('/etc/passwd').read()) > 0)",
         departure=HOST_FILES, ours=ERROR),
    case("write_outside_output_dir",
         "open('../outside_probe.txt', 'w').write('x')\nprint('written')",
         departure=HOST_FILES, ours=ERROR),
    case("huge_print", "print('x' * 70000)", departure=OUTPUT_CAP, ours=ERROR),
    case("large_allocation", "a = np.zeros((1536, 1024, 1024), np.uint8)\nprint(a.nbytes)",
         departure=MEMORY_CAP, ours=ERROR),
    # ------------------------------------------------------------ sessions (several blocks)
    case("session_variables_persist",
         _READ + "h, w = img.shape[:2]\nprint(w, h)",
         "crop = img[0:h // 2, 0:w // 2]\nprint(crop.shape)"),
    case("session_stale_processed_path",
         "img = Image.open(image_path)\n"
         f"processed_path = '{OUT}/first.png'\n"
         "img.crop((0, 0, 200, 200)).save(processed_path)\n"
         "print(processed_path)",
         "print('size of the first crop:', Image.open(processed_path).size)"),
    case("session_import_persists",
         "from PIL import ImageEnhance\nimg = Image.open(image_path)\nprint(img.mode)",
         "out = ImageEnhance.Contrast(img).enhance(1.5)\n"
         f"out.save('{OUT}/enh.png')\nprint('{OUT}/enh.png')"),
    case("session_second_block_new_crop",
         "img = Image.open(image_path)\n"
         "x1, y1, x2, y2 = 0, 0, 320, 240\n"
         f"p1 = '{OUT}/coarse.png'\nimg.crop((x1, y1, x2, y2)).save(p1)\nprint(p1)",
         "x1, y1, x2, y2 = 100, 100, 200, 180\n"
         f"p2 = '{OUT}/fine.png'\nimg.crop((x1, y1, x2, y2)).save(p2)\nprint(p2)"),
    case("session_function_reused",
         "def half(v):\n    return v // 2\nprint(half(640))",
         "print(half(480))",
         departure=LOST_FUNCTIONS, ours=[text("320"), text("240")]),
    case("session_error_then_recovery",
         "img = Image.open(image_path)\nprint(img.size[2])",
         "print(img.size[1])"),
]
