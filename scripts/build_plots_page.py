"""Write the HTML page `dvc plots show` fills (.dvc/config: plots.html_template), with Vega, Vega-Lite and
Vega-Embed inlined, so the plots render with no network.

DVC's own page loads the three libraries from a CDN and is blank offline. The libraries here come from the pinned
`vl-convert-python` wheel (constraints.txt), which carries them as one JavaScript bundle, so a fresh clone builds the
page from the package index alone, with nothing else to install. `make plots-page` runs this (`make run` and `make
test` do it first).

    python scripts/build_plots_page.py [OUT]      default: .dvc/plots/offline.html
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vl_convert

DEFAULT_OUT = Path(".dvc/plots/offline.html")
# DVC's plot templates declare the Vega-Lite 5 schema; this is the newest 5.x the wheel carries.
VEGA_LITE = "5.21"
# What dvc_render replaces in the page (dvc_render/html.py). `{scripts}` is left out on purpose: DVC fills it with
# its CDN <script> tags, which offline would only fail.
PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
{refresh_tag}
<title>DVC plots</title>
<!-- vega __VEGA__, vega-lite __VEGA_LITE__, vega-embed __EMBED__ inlined from vl-convert-python
     (scripts/build_plots_page.py): no network needed -->
<script>
__BUNDLE__
</script>
<style>
  body { font-family: sans-serif; }
  body > div { display: inline-block; margin: 12px; vertical-align: top; }
</style>
</head>
<body>
{plot_divs}
</body>
</html>
"""


def bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one classic script that defines `vegaEmbed` on window, safe inline."""
    code = vl_convert.javascript_bundle(vl_version=VEGA_LITE)
    clashes = [p for p in (*PLACEHOLDERS, "{scripts}") if p in code]
    if clashes:  # DVC's plain text replacement would corrupt the library
        raise SystemExit(f"the bundle contains DVC's placeholder(s) {clashes}; pin another vl-convert-python")
    return code.replace("</script", "<\\/script")  # an inline script ends at the first `</script`


def page() -> str:
    versions = {
        "__VEGA__": vl_convert.get_vega_version(),
        "__VEGA_LITE__": VEGA_LITE,
        "__EMBED__": vl_convert.get_vega_embed_version(),
    }
    text = PAGE
    for key, value in versions.items():
        text = text.replace(key, value)
    return text.replace("__BUNDLE__", bundle())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    out = parser.parse_args(argv).out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page(), encoding="utf-8")
    tmp.replace(out)  # atomic: dvc never reads a half-written page
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
