"""Builds plots/page.html, the page `dvc plots show` and `dvc plots diff` fill in (.dvc/config's
plots.html_template), with vega, vega-lite and vega-embed from plots/vendor/ inlined.

DVC's own page loads those libraries from a CDN, so without a network it stays blank; this one
needs nothing but the file DVC writes, wherever `--out` puts it (a relative <script src> would
break as soon as the page is written to another folder). It has no `{scripts}` placeholder, so
DVC's CDN <script> tags are left out.

    uv run python -m plots.page        # after replacing a file in plots/vendor/ (see its README)
"""

from pathlib import Path

HERE = Path(__file__).parent
VENDOR, PAGE = HERE / "vendor", HERE / "page.html"
# In load order: vega-lite needs vega, vega-embed both. (file, npm package, license file)
LIBRARIES = [
    ("vega.min.js", "vega@5.33.1", "LICENSE.vega"),
    ("vega-lite.min.js", "vega-lite@5.23.0", "LICENSE.vega-lite"),
    ("vega-embed.min.js", "vega-embed@6.29.0", "LICENSE.vega-embed"),
]
# What DVC replaces in the page (dvc_render.html.HTML.embed): {plot_divs} and {refresh_tag}.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

SKELETON = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>zIMDB plots</title>
<!-- Written by plots/page.py from plots/vendor/: change those, then run it again. -->
<style>
  body { font-family: sans-serif; margin: 16px; }
  .plots { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
</style>
@LIBRARIES@
</head>
<body>
<div class="plots">
{plot_divs}
</div>
</body>
</html>
"""


def script(name: str, package: str, license_file: str) -> str:
    code = (VENDOR / name).read_text(encoding="utf-8")
    # The source map is not vendored: without this line a browser's devtools would look for it.
    code = "\n".join(
        line for line in code.splitlines() if not line.startswith("//# sourceMappingURL=")
    )
    lowered = code.lower()
    # Inside <script>, "</script" would end the element and "<!--" change how it is parsed;
    # DVC would replace its placeholders inside the code too.
    for bad in ("</script", "<!--", *PLACEHOLDERS):
        if bad in lowered:
            raise ValueError(f"{name} contains {bad!r}; it cannot be inlined as it is")
    header = f"/* {package} ({name}), BSD-3-Clause: see plots/vendor/{license_file} */"
    return f"<script>\n{header}\n{code}\n</script>"


def build() -> str:
    scripts = "\n".join(script(*library) for library in LIBRARIES)
    return SKELETON.replace("@LIBRARIES@", scripts)


if __name__ == "__main__":
    PAGE.write_text(build(), encoding="utf-8")
    print(f"wrote {PAGE} ({PAGE.stat().st_size // 1024} KiB)")
