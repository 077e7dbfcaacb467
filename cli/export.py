"""``sppdet export``: the work directory's trained detector as one portable ``.sppdet`` file."""

from __future__ import annotations

import click

from cli.common import library_errors, method_option, stdout_console, tta_option, workdir_option
from sppdet.config import DEFAULT_SCORE_THRESHOLD


@click.command("export")
@click.argument("out", type=click.Path(dir_okay=False), metavar="OUT.sppdet")
@workdir_option
@click.option("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD, show_default=True,
              help="The score threshold saved as the file's default for sppdet detect --model.")
@tta_option("Test-time views saved as the file's default for sppdet detect --model.")
@method_option
def export(out, workdir, score_threshold, tta, method):
    """Write the trained detector to one portable file for sppdet detect --model.

    OUT holds the conv trunk that computed the training features, the fc head, the SVMs, the box
    regressors and the settings detection needs (proposals, scales, pyramid, test-time views), as
    numpy arrays and a JSON manifest in one zip: no pickle, nothing that runs code when loaded,
    and no path of this machine. It is written atomically and replaces an existing OUT.

    Example: sppdet export --workdir sppdet-work shapes.sppdet
    """
    from sppdet.config import DetectConfig
    from sppdet.workdir.export import export_model
    from sppdet.workdir.methods import DEFAULT_METHOD
    from sppdet.workdir.records import recorded_views
    from sppdet.workdir.store import WorkDir

    with library_errors():
        work = WorkDir(workdir)
        if tta is None:
            tta = recorded_views(work) if method == DEFAULT_METHOD else ()
        model = export_model(work, out, method, DetectConfig(score_threshold=score_threshold, tta=tta))
    head = f"{model.detector.head.hidden[0]}-{model.detector.head.hidden[1]} fc head, " if model.detector.head else ""
    stdout_console.print(
        f"wrote {out}: {len(model.classes)} classes ({', '.join(model.classes)}), {model.method}, "
        f"{model.info.config.backbone} x{model.info.config.width} trunk, {head}SVMs on "
        f"{model.detector.layer}, box regression {'yes' if model.detector.regressors else 'no'}, "
        f"views {','.join(tta) or 'none'}", markup=False, highlight=False, soft_wrap=True)
