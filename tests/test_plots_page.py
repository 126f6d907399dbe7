"""The page template of `dvc plots show` (plots/page.html): DVC is configured to use it, and it is
the build of the vendored libraries, so an update of plots/vendor/ cannot leave it stale.
tests/test_pipeline.py checks the page DVC writes from it."""

import configparser

from plots import page
from tests.conftest import ROOT


def test_dvc_config_names_the_page():
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc/config")
    # DVC resolves a relative html_template from the .dvc folder.
    assert (ROOT / ".dvc" / config["plots"]["html_template"]).resolve() == page.PAGE.resolve()


def test_page_is_the_build_of_plots_vendor():
    assert page.PAGE.read_text(encoding="utf-8") == page.build()
    html = page.PAGE.read_text(encoding="utf-8")
    # DVC fills {plot_divs} and {refresh_tag}; without {scripts} it adds no CDN <script> tags.
    assert html.count("{plot_divs}") == html.count("{refresh_tag}") == 1
    assert "{scripts}" not in html
    for name, _, license_file in page.LIBRARIES:
        assert (page.VENDOR / license_file).read_text().startswith("Copyright (c)")
        assert (page.VENDOR / name).read_text().splitlines()[0] in html
