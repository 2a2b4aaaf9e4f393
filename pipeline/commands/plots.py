"""`python -m pipeline plots [REV ...]`: `dvc plots show` (with revisions, `dvc plots diff REV …`)
once DVC's own rendering of every plot has been read and found to hold no `<`.

dvc-render copies each plot's Vega spec, its data rows, titles and labels included, unescaped
into a `<script>` of `dvc_plots/index.html`. The stages check every field they write
(records/plot_csv.py), but what DVC draws is not only theirs: plot files are committed to git
(`cache: false`) or pulled from a shared remote, dvc.yaml's titles and templates are committed
text, and a revision `dvc plots diff` reads holds whatever was committed. A `</script>` in any
of them would run in the browser of whoever opens the page. So DVC renders the plots as JSON
first (`--json`: the same collection, templates and revisions as the page), and any string
there holding a `<` (which no plot of numbers and labels needs) stops the command before DVC
writes the page, naming the plot and where in it, not the text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from pipeline.errors import PipelineError
from pipeline.integrations.repository import dvc, last_error_line

MAX_DEPTH = 64  # of DVC's JSON: specs nest a few levels; deeper is not a plot


def unsafe_places(value: object, where: str = "", depth: int = 0) -> Iterator[str]:
    """Where in `value` (DVC's JSON) a string, or a mapping's key, holds a `<`."""
    if depth > MAX_DEPTH:
        yield f"{where} (nested too deep)"
    elif isinstance(value, str):
        if "<" in value:
            yield where or "the text"
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unsafe_places(item, f"{where}[{index}]", depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            if "<" in str(key):
                yield f"a key in {where or 'the spec'}"
            else:
                yield from unsafe_places(item, name, depth + 1)


def check_rendering(command: list[str]) -> None:
    """DVC's JSON rendering of `command` (plots show / diff): refused where it holds a `<`."""
    rendered = dvc(*command, "--json")
    if rendered.returncode != 0:
        raise PipelineError(
            f"plots: `dvc {' '.join(command)} --json` failed ({last_error_line(rendered)})"
        )
    try:
        plots = json.loads(rendered.stdout).get("data") or {}
    except (ValueError, AttributeError):
        raise PipelineError(f"plots: `dvc {' '.join(command)} --json` gave no JSON") from None
    for number, (name, renderings) in enumerate(sorted(plots.items()), start=1):
        label = f"plot {number} ({name})" if "<" not in name else f"plot {number} (its name)"
        for place in unsafe_places(renderings):
            raise PipelineError(
                f"plots: {label} holds a '<' at {place} (not shown): dvc-render would put it "
                "unescaped into dvc_plots/index.html, where a </script> runs as code, so "
                "nothing was drawn; restore its files, dvc.yaml and templates from a commit "
                "you trust, or rerun the stage that writes it"
            )


def run(revisions: list[str]) -> int:
    command = ["plots", "diff", *revisions] if revisions else ["plots", "show"]
    check_rendering(command)
    return dvc(*command, capture=False).returncode
